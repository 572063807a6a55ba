"""contend: is this process, service or container starved of CPU, how badly, and by what?"""

__version__ = "0.1.0"
