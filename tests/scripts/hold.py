# A local user who is not admitted, trying to hold iamd's places: run under setpriv as that
# user by tests/local_users.rs. It opens up to CONNECTIONS connections to SOCKET (each with
# the hello frame HELLO), then sends each request frame of REQUESTS (hex, comma-separated)
# SUBS times on every connection, each with its own id (SUBS 0: once, without waiting for
# the answer, so that they are all in flight at once), and reports on stdout:
#   connections N / subscriptions N / refused TEXT (the error body, printable part)
# then "holding" and keeps everything open until its stdin closes; then it reports
# "open N", the connections iamd has not closed meanwhile.
import socket, struct, sys

path, conns, subs, hello = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), bytes.fromhex(sys.argv[4])
requests = [bytes.fromhex(h) for h in sys.argv[5].split(",")] if len(sys.argv) > 5 and sys.argv[5] else []


def read_frame(s):
    """The next answer or error frame; events of subscriptions already held are skipped."""
    while True:
        frame = read_any(s)
        if frame is None or frame[0] != 2:
            return frame


def read_any(s):
    head = b""
    while len(head) < 20:
        chunk = s.recv(20 - len(head))
        if not chunk:
            return None
        head += chunk
    kind, length = head[5], struct.unpack("<I", head[16:20])[0]
    body = b""
    while len(body) < length:
        chunk = s.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return kind, body


def text(body):
    return "".join(chr(b) for b in body if 32 <= b < 127)


refusals = []
held = []
for _ in range(conns):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendall(hello)
        answer = read_frame(s)
    except OSError as e:
        refusals.append("connect: %s" % e)
        break
    if answer is None or answer[0] != 1:
        refusals.append(text(answer[1]) if answer else "closed")
        break
    held.append(s)
print("connections %d" % len(held), flush=True)

subscribed = 0
next_id = 100
if subs == 0:
    for s in held:
        for r in requests:
            frame = bytearray(r)
            frame[8:16] = struct.pack("<Q", next_id)
            next_id += 1
            s.sendall(frame)
for s in held:
    for _ in range(subs):
        for r in requests:
            frame = bytearray(r)
            frame[8:16] = struct.pack("<Q", next_id)
            next_id += 1
            s.sendall(frame)
            answer = read_frame(s)
            if answer is None:
                refusals.append("closed")
            elif answer[0] == 1:
                subscribed += 1
            else:
                refusals.append(text(answer[1]))
print("subscriptions %d" % subscribed, flush=True)
for r in sorted(set(refusals)):
    print("refused %s" % r, flush=True)
print("holding", flush=True)
sys.stdin.read()
still = 0
for s in held:
    s.setblocking(False)
    try:
        still += 1 if s.recv(65536) else 0
    except BlockingIOError:
        still += 1
    except OSError:
        pass
print("open %d" % still, flush=True)
