#!/usr/bin/env python3
"""Floors of running one no-op action on this machine, without re-server:

- fork_exec: posix_spawn of /bin/true and waitpid (what a host worker must do);
- docker_exec: one `exec` of `true` in a started container through the
  engine's API: create the exec, start it attached and read its output to
  the end, inspect its exit code (what a warm docker worker must do).

usage: exec_floors.py [RUNS] [IMAGE]   prints one JSON object (medians in ms)
Env: DOCKER_SOCK (default /var/run/docker.sock). docker_exec is null when no
engine answers or the image is missing.
"""
import http.client
import json
import os
import socket
import statistics
import sys
import time


def fork_exec(runs):
    times = []
    for _ in range(runs + 50):
        t = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - t)
    return times[50:]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(conn, method, url, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, url, json.dumps(body) if body is not None else None, headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {url}: {resp.status} {data[:200]!r}")
    return json.loads(data) if data else None


def docker_exec(runs, image):
    conn = UnixHTTPConnection(os.environ.get("DOCKER_SOCK", "/var/run/docker.sock"))
    try:
        cid = call(conn, "POST", "/containers/create", {
            "Image": image, "Entrypoint": ["/bin/sh", "-c", "sleep 600"], "Cmd": [],
            "HostConfig": {"NetworkMode": "none", "AutoRemove": True},
            "Labels": {"re-server.floor": "1"},
        })["Id"]
    except (OSError, RuntimeError):
        return None
    try:
        call(conn, "POST", f"/containers/{cid}/start")
        times = []
        for i in range(runs + 3):
            t = time.perf_counter()
            eid = call(conn, "POST", f"/containers/{cid}/exec",
                       {"Cmd": ["true"], "AttachStdout": True, "AttachStderr": True})["Id"]
            call(conn, "POST", f"/exec/{eid}/start", {"Detach": False, "Tty": False})
            call(conn, "GET", f"/exec/{eid}/json")
            if i >= 3:
                times.append(time.perf_counter() - t)
        return times
    finally:
        try:
            call(conn, "DELETE", f"/containers/{cid}?force=true")
        except (OSError, RuntimeError):
            pass


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    image = sys.argv[2] if len(sys.argv) > 2 else "re-server-test/busybox:latest"
    ms = lambda ts: round(statistics.median(ts) * 1e3, 3) if ts else None
    print(json.dumps({
        "fork_exec_ms": ms(fork_exec(runs)),
        "docker_exec_ms": ms(docker_exec(max(runs // 20, 20), image)),
    }))


if __name__ == "__main__":
    main()
