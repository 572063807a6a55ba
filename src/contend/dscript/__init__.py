"""D scripts on Linux: parse a D subset and translate it to a bpftrace program."""
