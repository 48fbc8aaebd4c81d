"""Imported by the local backend's forkserver alone, as its first preload module.

The forkserver ends when the harness and the runs it forked have ended, so it need not obey the
signals that reach a whole process group: a dropped ssh session (SIGHUP) or a batch system's stop
(SIGTERM) would otherwise end it first, and with it the exit codes the harness waits for, before the
runs have written their checkpoints. The runs set their own handlers (harness.worker.run_here)."""
import signal

signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
