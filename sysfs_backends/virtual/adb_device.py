"""A virtual phone over ADB: the device side of the ADB protocol over TCP, backed by a real shell.

Lets the Android backend (and the stock `adb` client) be exercised with no phone: the test suite,
`dvfs-gov demo --backend android` and `dvfs-gov virtual-adb` use it.

Implements what AOSP's protocol.txt describes for a device: the CNXN handshake with version and
max-payload negotiation, AUTH (TOKEN -> SIGNATURE verified against known keys -> RSAPUBLICKEY
accepted as if the user tapped "allow"), streams (OPEN / OKAY / WRTE / CLSE, one WRTE in flight
until the host's OKAY), and the ``shell:`` service. Each shell command runs in a real ``sh``; paths
under ``/sys`` are mapped onto a kernel-shaped tree (the virtual board's). The shell writes the
attribute files itself; the virtual board's kernel then applies those values with its rules before
anything is read back (the device's ``cat``, like toybox's on a phone, first asks it to) and after
each command, so read-backs show the frequencies really in force, as on a phone. A value the kernel
refuses this way shows as a read-back that differs from what was written.

Knobs for fault tests: ``root`` (is the shell uid 0), ``su`` ("grant", "deny", "missing"),
``eacces`` (files whose writes fail with Permission denied, as SELinux or a read-only attribute
would), ``selinux`` (what ``getenforce`` says), ``stall_s`` (delay before answering a command) and
``drop_next`` (close the TCP connection in the middle of the next command).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

from sysfs_backends.virtual.board import VirtualKernel

A_CNXN, A_AUTH, A_OPEN, A_OKAY, A_CLSE, A_WRTE = (
    0x4E584E43, 0x48545541, 0x4E45504F, 0x59414B4F, 0x45534C43, 0x45545257)
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


def parse_adb_public_key(text: bytes) -> tuple[int, int]:
    """adb's public key format (base64 of len, n0inv, n[len], rr[len], e) -> (n, e)."""
    import base64

    blob = base64.b64decode(text.split(b" ")[0].strip(b"\0"))
    words = struct.unpack_from("<I", blob, 0)[0]
    n = int.from_bytes(blob[8: 8 + 4 * words], "little")
    e = struct.unpack_from("<I", blob, 8 + 8 * words)[0]
    return n, e


def verify_signature(key: tuple[int, int], token: bytes, signature: bytes) -> bool:
    """The host signs the token as if it were a SHA-1 digest (PKCS#1 v1.5)."""
    n, e = key
    size = (n.bit_length() + 7) // 8
    m = pow(int.from_bytes(signature, "big"), e, n).to_bytes(size, "big")
    expected = SHA1_DIGEST_INFO + token
    pad = size - len(expected) - 3
    return m == b"\x00\x01" + b"\xff" * pad + b"\x00" + expected


class VirtualAdbDevice:
    """Serve one virtual board tree over ADB on 127.0.0.1:<port> (ephemeral by default)."""

    def __init__(self, tree: str | Path, port: int = 0, root: bool = True, su: str = "grant",
                 selinux: str = "Enforcing", known_keys: list[bytes] | None = None) -> None:
        self.tree = Path(tree)
        self.root = root
        self.su = su
        self.selinux = selinux
        self.eacces: set[str] = set()
        self.stall_s = 0.0
        self.drop_next = False
        self.known_keys = [parse_adb_public_key(k) for k in (known_keys or [])]
        self.accepted_keys: list[bytes] = []
        self.commands: list[str] = []
        self.connections = 0
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", port))
        self._srv.listen(8)
        self.port = self._srv.getsockname()[1]
        self._bin = Path(tempfile.mkdtemp(prefix="adbdev-bin-"))
        self._kernel = VirtualKernel(self.tree) if (self.tree / ".virtual/state.json").exists() else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._req, self._ack = self._bin / "kernel.req", self._bin / "kernel.ack"
        os.mkfifo(self._req)
        os.mkfifo(self._ack)
        self._bin.chmod(0o755)
        self._perm_key: frozenset | None = None
        self._writable: set[Path] | None = None
        if os.geteuid() == 0:
            # the unprivileged shell must be able to reach the tree: its folders get o+x (search
            # only, no listing). Left so on close: another virtual phone may share a parent.
            for parent in [self.tree, *self.tree.parents]:
                mode = parent.stat().st_mode & 0o777
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
        threading.Thread(target=self._kernel_sync_loop, args=(self._req, self._ack), daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> VirtualAdbDevice:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        try:
            self._srv.close()
        except OSError:
            pass
        for c in list(self._clients):
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass

    def restart_adbd(self) -> None:
        """Drop every connection, as `adbd` restarting or a cable pulled would."""
        for c in list(self._clients):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- wire ------------------------------------------------------------------------------
    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        if hasattr(socket, "TCP_QUICKACK"):  # answer the host's header at once (no delayed ACK)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return buf

    def _read(self, sock: socket.socket) -> tuple[int, int, int, bytes]:
        cmd, a0, a1, length, crc, magic = struct.unpack("<6I", self._recv_exact(sock, 24))
        if magic != cmd ^ 0xFFFFFFFF:
            raise ConnectionError("bad magic")
        data = self._recv_exact(sock, length) if length else b""
        if crc and crc != _checksum(data):
            raise ConnectionError("bad checksum")
        return cmd, a0, a1, data

    @staticmethod
    def _send(sock: socket.socket, cmd: int, a0: int, a1: int, data: bytes = b"") -> None:
        sock.sendall(struct.pack("<6I", cmd, a0, a1, len(data), _checksum(data), cmd ^ 0xFFFFFFFF) + data)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            self.connections += 1
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._session(sock)
        except (ConnectionError, OSError, struct.error):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass
            if sock in self._clients:
                self._clients.remove(sock)

    def _session(self, sock: socket.socket) -> None:
        cmd, version, maxdata, _banner = self._read(sock)
        if cmd != A_CNXN:
            return
        version, maxdata = min(version, VERSION), min(maxdata, MAX_PAYLOAD)
        token = os.urandom(20)
        self._send(sock, A_AUTH, AUTH_TOKEN, 0, token)
        while True:
            cmd, kind, _, data = self._read(sock)
            if cmd != A_AUTH:
                return
            if kind == AUTH_SIGNATURE:
                if any(verify_signature(k, token, data) for k in self.known_keys):
                    break
                token = os.urandom(20)
                self._send(sock, A_AUTH, AUTH_TOKEN, 0, token)
            elif kind == AUTH_RSAPUBLICKEY:
                self.accepted_keys.append(data)  # the user tapped "Allow USB debugging"
                self.known_keys.append(parse_adb_public_key(data))
                break
        banner = b"device::ro.product.name=dvfs_test;ro.product.model=VirtualAdbDevice;ro.product.device=virt;"
        self._send(sock, A_CNXN, version, maxdata, banner)
        next_id = 1
        while True:
            cmd, a0, a1, data = self._read(sock)
            if cmd != A_OPEN:
                continue  # stray OKAY/CLSE for finished streams
            local, remote = next_id, a0
            next_id += 1
            service = data.rstrip(b"\0").decode()
            if not service.startswith("shell:"):
                self._send(sock, A_CLSE, 0, remote)
                continue
            self._send(sock, A_OKAY, local, remote)
            output = self._run_shell(service[len("shell:"):])
            if self.drop_next:
                self.drop_next = False
                sock.sendall(struct.pack("<6I", A_WRTE, local, remote, 100, 0, A_WRTE ^ 0xFFFFFFFF) + output[:10])
                sock.shutdown(socket.SHUT_RDWR)
                raise ConnectionError("dropped on purpose")
            for i in range(0, len(output), maxdata):
                self._send(sock, A_WRTE, local, remote, output[i:i + maxdata])
                while True:  # one write in flight: wait for the host's OKAY
                    c, _, _, _ = self._read(sock)
                    if c == A_OKAY:
                        break
                    if c == A_CLSE:
                        break
            self._send(sock, A_CLSE, local, remote)

    # ---- the shell ----------------------------------------------------------------------------
    def _prepare_bin(self) -> None:
        key = (self.root, self.su, self.selinux)
        if getattr(self, "_bin_key", None) == key:
            return
        self._bin_key = key
        uid = "0" if self.root else "2000"
        (self._bin / "id").write_text(
            f'#!/bin/sh\nif [ "$1" = "-u" ]; then echo {uid}; else echo "uid={uid} gid={uid}"; fi\n')
        (self._bin / "getenforce").write_text(f"#!/bin/sh\necho {self.selinux}\n")
        su = self._bin / "su"
        if self.su == "missing":  # shadow the host's own su, as a phone without one would answer
            su.write_text('#!/bin/sh\necho "/system/bin/sh: su: inaccessible or not found" >&2\nexit 127\n')
        elif self.su == "deny":
            su.write_text('#!/bin/sh\necho "Permission denied" >&2\nexit 1\n')
        else:
            su.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then shift; exec /bin/sh -c "$1"; fi\nexec /bin/sh\n')
        # toybox's cat, except that the kernel first applies what the shell wrote (see module doc)
        (self._bin / "cat").write_text(
            '#!/bin/sh\necho sync > "$DEVICE_REQ"; read _ack < "$DEVICE_ACK"; exec /bin/cat "$@"\n')
        for f in self._bin.iterdir():
            f.chmod(0o666 if f.name.startswith("kernel.") else 0o755)
        # root-only attributes (the clock's reading): the shell process is unprivileged here, so
        # what root (or a granted su) may read is opened to it, and closed when it may not
        privileged = self.root or self.su == "grant"
        for p in (self.tree / "sys/devices/system/cpu/cpufreq").glob("policy*/cpuinfo_cur_freq"):
            p.chmod(0o444 if privileged else 0o400)

    def _permissions(self) -> None:
        """The shell runs unprivileged (when we are root): attributes it may write are made
        writable for it, and the ``eacces`` ones read-only, so refusals come from the real
        kernel's permission check."""
        if self._writable is None:  # the attributes the kernel lets root write, before any change
            self._writable = {p for p in (self.tree / "sys").rglob("*") if p.is_file() and p.stat().st_mode & 0o200}
        for p in self._writable:
            rel = "/" + str(p.relative_to(self.tree))
            p.chmod(0o444 if rel in self.eacces else 0o666)

    def _kernel_sync_loop(self, req: Path, ack: Path) -> None:
        """Serve the `cat` wrapper: apply what the shell wrote before it reads anything back."""
        while not self._stop.is_set():
            with open(req) as fh:
                if fh.read() == "":
                    continue
            if self._kernel is not None:
                self._kernel.reconcile()
                self._permissions_after_kernel()
            with open(ack, "w") as fh:
                fh.write("ok\n")

    def _permissions_after_kernel(self) -> None:
        for name in ("userspace/set_freq",):
            for p in (self.tree / "sys/class/devfreq").glob(f"*/{name}"):
                if p.stat().st_mode & 0o777 != 0o666:
                    p.chmod(0o666)

    def _run_shell(self, command: str) -> bytes:
        with self._lock:
            self.commands.append(command)
            if self.stall_s:
                self._stop.wait(self.stall_s)
            self._prepare_bin()
            if self._perm_key != frozenset(self.eacces):
                self._permissions()
                self._perm_key = frozenset(self.eacces)
            env = {"PATH": f"{self._bin}:/usr/bin:/bin", "HOME": str(self.tree), "LC_ALL": "C",
                   "DEVICE_REQ": str(self._req), "DEVICE_ACK": str(self._ack)}
            preexec = None
            if os.geteuid() == 0:
                def preexec() -> None:  # an unprivileged shell, like adbd's uid 2000
                    os.setgid(65534)
                    os.setuid(65534)
            res = subprocess.run(["/bin/sh", "-c", command.replace("/sys/", f"{self.tree}/sys/")],
                                 cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=60, preexec_fn=preexec)
            if self._kernel is not None:
                self._kernel.reconcile()
                self._permissions_after_kernel()
            return res.stdout.replace(str(self.tree).encode() + b"/sys/", b"/sys/")

