#!/usr/sbin/dtrace -s
/*
 * cpu_usage.d - when Python processes go on and off CPU, how long they run before
 * being descheduled, and how often they are woken up.
 * Portable D: runs under dtrace(1) and under `contend dtrace -s cpu_usage.d`.
 */
#pragma D option quiet

sched:::on-cpu
/execname == "python" || execname == "python3" || execname == "contend-app" ||
 execname == "contend-noise"/
{
	self->on = timestamp;
	printf("[%Y] %s (PID:%d) on CPU\n", walltimestamp, execname, pid);
}

sched:::off-cpu
/self->on/
{
	printf("[%Y] %s (PID:%d) off CPU after %d nanoseconds\n", walltimestamp,
	    execname, pid, timestamp - self->on);
	@oncpu[execname] = sum(timestamp - self->on);
	@slices[execname] = count();
	@runtime = quantize(timestamp - self->on);
	self->on = 0;
}

sched:::wakeup
/execname == "python" || execname == "python3" || execname == "contend-app" ||
 execname == "contend-noise"/
{
	@wakeups[execname] = count();
}

END
{
	printf("\n=== On-CPU time (ns) ===\n");
	printa("%s  %@d\n", @oncpu);
	printf("\n=== Times scheduled ===\n");
	printa("%s  %@d\n", @slices);
	printf("\n=== Wakeups issued ===\n");
	printa("%s  %@d\n", @wakeups);
	printf("\n=== Run time before descheduling (ns) ===\n");
	printa(@runtime);
}
