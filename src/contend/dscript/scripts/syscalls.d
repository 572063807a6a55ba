#!/usr/sbin/dtrace -s
/*
 * syscalls.d - system calls made by Python processes (the Flask app and the noise
 * generator): count of each call per process, and its average execution time.
 * Portable D: runs under dtrace(1) and under `contend dtrace -s syscalls.d`.
 * The processes are matched by name: python, python3 and the lab's own names.
 */
#pragma D option quiet

syscall:::entry
/execname == "python" || execname == "python3" || execname == "contend-app" ||
 execname == "contend-noise"/
{
	self->ts = timestamp;
}

syscall:::return
/self->ts/
{
	@calls[execname, probefunc] = count();
	@avgtime[execname, probefunc] = avg(timestamp - self->ts);
	self->ts = 0;
}

END
{
	printf("=== System Calls Summary ===\n");
	printf("Process: Function Count\n");
	printa("%s  %s  %@d\n", @calls);
	printf("\n=== Average Execution Time (ns) ===\n");
	printa("%s  %s  %@d\n", @avgtime);
}
