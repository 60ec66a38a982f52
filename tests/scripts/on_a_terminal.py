# Run a command on a pseudo-terminal, as a person at a console would: wait for PROMPT, type
# the line given on stdin followed by Enter (and no end of file), then read what the
# terminal shows until the command exits. Prints the screen's bytes and exits with the
# command's status, or 99 if it is still waiting 20 s after Enter (for an end of file).
import os, pty, select, sys, time

prompt, argv = sys.argv[1].encode(), sys.argv[2:]
line = sys.stdin.read()
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
screen = b""


def pump(until, seconds):
    global screen
    end = time.time() + seconds
    while time.time() < end and not until():
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                screen += os.read(fd, 4096)
            except OSError:
                return


pump(lambda: prompt in screen, 20)
os.write(fd, line.encode())
status = None
end = time.time() + 20
while status is None and time.time() < end:
    pump(lambda: False, 0.2)
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = os.waitstatus_to_exitcode(st)
pump(lambda: False, 0.3)
sys.stdout.write(screen.decode(errors="replace"))
if status is None:
    os.kill(pid, 9)
    sys.exit(99)
sys.exit(status)
