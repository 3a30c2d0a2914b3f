#!/usr/bin/env python3
"""CPU floors of moving 256 MiB on this machine, without gRPC:
writing it to a file in DATA_DIR (what the filesystem CAS must do), and
sending it over loopback TCP (what any client and server must do). With
the SHA-256 speed, they bound what a ByteStream upload can reach when the
client and the server share the machine's cores.

usage: floors.py DATA_DIR SHA256_MB_S [RUNS]   prints one JSON object
"""
import json
import os
import resource
import socket
import sys
import threading
import time

SIZE = 256 << 20
CHUNK = 1 << 20


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def file_write(data_dir):
    path = os.path.join(data_dir, "floor-write")
    buf = os.urandom(CHUNK)
    c0 = cpu()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for _ in range(SIZE // CHUNK):
        os.write(fd, buf)
    os.close(fd)
    spent = cpu() - c0
    os.unlink(path)
    return spent


def loopback_tcp():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def receive():
        conn, _ = srv.accept()
        view = memoryview(bytearray(CHUNK))
        got = 0
        while got < SIZE:
            n = conn.recv_into(view)
            if not n:
                break
            got += n
        conn.close()

    t = threading.Thread(target=receive)
    t.start()
    s = socket.create_connection(srv.getsockname())
    data = os.urandom(CHUNK)
    c0 = cpu()
    for _ in range(SIZE // CHUNK):
        s.sendall(data)
    s.close()
    t.join()
    spent = cpu() - c0
    srv.close()
    return spent


def main():
    data_dir, sha_mb_s = sys.argv[1], float(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    write = sorted(file_write(data_dir) for _ in range(runs))[runs // 2]
    tcp = sorted(loopback_tcp() for _ in range(runs))[runs // 2]
    sha = SIZE / (sha_mb_s * 1e6)
    # Hashing is one serial stream; the other work can run beside it on the
    # second core, so the upload takes at least the larger of the two bounds.
    cores = os.cpu_count() or 1
    best = max(sha, (sha + write + tcp) / cores)
    print(json.dumps({
        "size_bytes": SIZE,
        "sha256_s": round(sha, 4),
        "file_write_cpu_s": round(write, 4),
        "loopback_tcp_cpu_s": round(tcp, 4),
        "cores": cores,
        "upload_ceiling_mb_s": round(SIZE / best / 1e6, 1),
        "upload_ceiling_vs_sha256": round(SIZE / best / 1e6 / sha_mb_s, 3),
    }))


if __name__ == "__main__":
    main()
