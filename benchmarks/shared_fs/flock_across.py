"""Does a flock held through one path (a process holds it) keep out a flock through another path?
usage: python flock_across.py HELD_PATH TRIED_PATH"""
import fcntl
import os
import subprocess
import sys

held, tried = sys.argv[1:3]
open(held, "a").close()
holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                           "fcntl.flock(fd, fcntl.LOCK_EX); print(flush=True); sys.stdin.read()", held],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
holder.stdout.readline()
fd = os.open(tried, os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print(f"flock via {tried} while {held} is held: taken (NOT excluded)")
except BlockingIOError:
    print(f"flock via {tried} while {held} is held: blocked (excluded)")
finally:
    os.close(fd)
    holder.stdin.close()
    holder.wait(timeout=30)
