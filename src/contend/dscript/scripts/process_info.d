#!/usr/sbin/dtrace -s
/*
 * process_info.d - process and thread lifecycle: new processes, new threads, exits,
 * and the number of system calls per process.
 * Portable D: runs under dtrace(1) and under `contend dtrace -s process_info.d`.
 */
#pragma D option quiet

proc:::create
{
	printf("[%Y] New process: %s (PID:%d, PPID:%d)\n", walltimestamp, execname,
	    arg0, pid);
}

thread:::create
{
	printf("[%Y] New thread created in %s (PID:%d, TID:%d)\n", walltimestamp,
	    execname, pid, arg0);
}

proc:::exit
{
	/* arg0 is the reason: 1 exited, 2 killed by a signal */
	printf("[%Y] Process exit: %s (PID:%d) reason %d\n", walltimestamp, execname,
	    pid, arg0);
}

syscall:::entry
/execname == "python" || execname == "python3" || execname == "contend-app" ||
 execname == "contend-noise"/
{
	@syscalls[execname] = count();
}

END
{
	printf("\n=== Process Activity Summary ===\n");
	printa("%s  %@d\n", @syscalls);
}
