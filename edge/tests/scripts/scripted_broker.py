#!/usr/bin/env python3
"""A scripted MQTT 3.1.1 broker for fv-edge's delivery tests: it acknowledges selectively and
cuts connections on cue, which no real broker does on purpose.

    scripted_broker.py PORT LOG [--cut-after N] [--ack-first K]

On its first connection it acknowledges the first K result publishes, withholds the PUBACK of
the rest, and after N result publishes closes the connection abruptly (a reset mid-burst).
Later connections get every PUBACK. Every event goes to LOG as one JSON line:
{"conn": c, "event": "publish" | "ack", "pkid": p, "id": result id, "dup": bool}.
It stops by itself after 300 s.
"""
import json
import socket
import sys
import threading
import time

port, log_path = int(sys.argv[1]), sys.argv[2]
args = sys.argv[3:]
cut_after = int(args[args.index("--cut-after") + 1]) if "--cut-after" in args else 4
ack_first = int(args[args.index("--ack-first") + 1]) if "--ack-first" in args else 2
log = open(log_path, "a", buffering=1)
lock = threading.Lock()


def record(**kv):
    with lock:
        log.write(json.dumps(kv) + "\n")


def read_exact(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise EOFError
        b += chunk
    return b


def read_packet(s):
    first = read_exact(s, 1)[0]
    mult, length = 1, 0
    while True:
        d = read_exact(s, 1)[0]
        length += (d & 0x7F) * mult
        if not d & 0x80:
            break
        mult *= 128
    return first, read_exact(s, length)


def serve(conn, n):
    results = 0
    try:
        while True:
            first, body = read_packet(conn)
            kind = first >> 4
            if kind == 1:  # CONNECT
                conn.sendall(bytes([0x20, 2, 0, 0]))
            elif kind == 3:  # PUBLISH
                qos = (first >> 1) & 3
                tlen = int.from_bytes(body[:2], "big")
                topic = body[2 : 2 + tlen].decode()
                rest = body[2 + tlen :]
                pkid = 0
                if qos:
                    pkid = int.from_bytes(rest[:2], "big")
                    rest = rest[2:]
                if not topic.endswith("/result"):
                    if qos:
                        conn.sendall(bytes([0x40, 2]) + pkid.to_bytes(2, "big"))
                    continue
                rid = json.loads(rest).get("id")
                results += 1
                record(conn=n, event="publish", pkid=pkid, id=rid, dup=bool(first & 8))
                if n > 1 or results <= ack_first:
                    conn.sendall(bytes([0x40, 2]) + pkid.to_bytes(2, "big"))
                    record(conn=n, event="ack", pkid=pkid, id=rid)
                if n == 1 and results >= cut_after:
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                    return
            elif kind == 12:  # PINGREQ
                conn.sendall(bytes([0xD0, 0]))
            elif kind == 14:  # DISCONNECT
                conn.close()
                return
    except (EOFError, OSError):
        pass


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(8)
srv.settimeout(1.0)
deadline = time.time() + 300
n = 0
while time.time() < deadline:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        continue
    n += 1
    threading.Thread(target=serve, args=(c, n), daemon=True).start()
