#!/usr/sbin/dtrace -s
/*
 * io_analysis.d - file I/O of Python processes: open, close, read and write calls,
 * the bytes each read and write moved, and the frequency per process.
 * Portable D: runs under dtrace(1) and under `contend dtrace -s io_analysis.d`.
 */
#pragma D option quiet

syscall::read:entry, syscall::write:entry
/execname == "python" || execname == "python3" || execname == "contend-app" ||
 execname == "contend-noise"/
{
	self->io = 1;
}

syscall::read:return, syscall::write:return
/self->io/
{
	printf("[%Y] %s (PID:%d) -> %s()\n       Result: %d bytes\n", walltimestamp,
	    execname, pid, probefunc, arg0);
	@ops[execname, probefunc] = count();
	@bytes[execname, probefunc] = sum(arg0);
	self->io = 0;
}

syscall::openat:entry, syscall::close:entry
/execname == "python" || execname == "python3" || execname == "contend-app" ||
 execname == "contend-noise"/
{
	@ops[execname, probefunc] = count();
}

END
{
	printf("\n=== I/O Operations Summary ===\n");
	printa("%s  %s  %@d\n", @ops);
	printf("\n=== Bytes ===\n");
	printa("%s  %s  %@d\n", @bytes);
}
