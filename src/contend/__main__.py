from contend.cli import entry

entry()
