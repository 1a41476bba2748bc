"""A virtual phone over ADB: the device side of the ADB protocol over TCP, on loopback only.

Lets the Android backend (and the stock `adb` client) be exercised with no phone: the test suite,
`dvfs-gov demo --backend android` and `dvfs-gov virtual-adb` use it.

Implements what AOSP's protocol.txt describes for a device: the CNXN handshake with version and
max-payload negotiation, RSA authentication (AUTH TOKEN -> SIGNATURE verified against the known
keys -> RSAPUBLICKEY), streams (OPEN / OKAY / WRTE / CLSE, one WRTE in flight until the host's
OKAY), and the ``shell:`` service.

Who may connect: the keys given (``known_keys``, adb's ``adb_keys`` format, `--keys FILE` in the
CLI), or, when none are given, the first key presented (trust on first use, announced with its
fingerprint through ``on_notice``); any other key is refused and the connection closed. A public
key is only accepted from a host that proved it holds the private key: one of the signatures it
sent in this handshake must verify with it (both adb-shell and the stock adb client sign before
they send their public key). Messages are bounded (size, auth attempts, handshake time,
connections), so a hostile local process cannot exhaust the server.

What a shell command can do: only what ``phone_shell`` interprets (``cat``, ``echo V > FILE``,
``ls``, ``getprop``, ``id``, ``su -c`` of those, ...), on the virtual board's tree seen as the
phone's ``/``; writes go through the virtual kernel. No host program is ever run, and nothing is
written outside the tree (no temporary folders either, so nothing is left behind by a crash).

Knobs for fault tests: ``root`` (is the shell uid 0), ``su`` ("grant", "deny", "missing"),
``eacces`` (attributes whose writes fail with Permission denied, as SELinux would), ``selinux``
(what ``getenforce`` says), ``stall_s`` (delay before answering a command) and ``drop_next``
(close the TCP connection in the middle of the next command).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from sysfs_backends.virtual.board import VirtualKernel
from sysfs_backends.virtual.phone_shell import Phone, PhoneFS, run_command

log = logging.getLogger(__name__)
A_CNXN, A_AUTH, A_OPEN, A_OKAY, A_CLSE, A_WRTE = (
    0x4E584E43, 0x48545541, 0x4E45504F, 0x59414B4F, 0x45534C43, 0x45545257)
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")
LISTEN_HOST = "127.0.0.1"  # never another interface: this is a test phone with a root shell
HANDSHAKE_TIMEOUT_S = 10.0  # from TCP accept to an authenticated CNXN
MAX_AUTH_MESSAGES = 10  # signatures / public keys one connection may try
MAX_CONNECTIONS = 64  # at once; unauthenticated ones are dropped after HANDSHAKE_TIMEOUT_S
MAX_REFUSALS_KEPT = 1000  # refused_keys and the announced notices stay bounded under a flood


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


def parse_adb_public_key(text: bytes) -> tuple[int, int]:
    """adb's public key format (base64 of len, n0inv, n[len], rr[len], e, then an optional
    ``user@host``) -> (n, e). ValueError unless it is a well-formed 2048- to 4096-bit RSA key."""
    try:
        blob = base64.b64decode(text.strip(b"\0").split(b" ")[0].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(blob) < 4:
        raise ValueError("too short")
    words = struct.unpack_from("<I", blob, 0)[0]
    if not 64 <= words <= 128 or len(blob) != 12 + 8 * words:
        raise ValueError("not an RSA public key of 2048 to 4096 bits in adb's format")
    n = int.from_bytes(blob[8: 8 + 4 * words], "little")
    e = struct.unpack_from("<I", blob, 8 + 8 * words)[0]
    if e not in (3, 65537) or n.bit_length() < 2040:
        raise ValueError("unexpected RSA exponent or modulus")
    return n, e


def key_fingerprint(text: bytes) -> str:
    """The fingerprint Android's "Allow USB debugging?" dialog shows: MD5 of the key, in hex pairs."""
    try:
        blob = base64.b64decode(text.strip(b"\0").split(b" ")[0].strip())
    except (binascii.Error, ValueError):
        blob = text
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def key_comment(text: bytes) -> str:
    """The ``user@host`` after the key, made safe to print (a hostile host chooses it)."""
    parts = text.strip(b"\0").strip().split(b" ", 1)
    comment = parts[1].decode("ascii", "replace") if len(parts) > 1 else ""
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in comment)[:64]


def load_adb_keys(path: str | Path) -> list[bytes]:
    """Public keys, one per line, as in adbd's ``adb_keys`` or an ``adbkey.pub``; blank lines and
    ``#`` comments are skipped. ValueError naming the file and line for anything else."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the keys file: {exc.strerror or exc}") from None
    keys = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        if line.startswith(b"-----BEGIN"):
            raise ValueError(f"{path}:{number}: this is a private key; give the public one (adbkey.pub)")
        try:
            parse_adb_public_key(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not an ADB public key ({exc}); expected "
                             "'<base64 key> user@host' per line, as in adb_keys or ~/.android/adbkey.pub") from None
        keys.append(line)
    if not keys:
        raise ValueError(f"{path}: no ADB public keys in the file (one '<base64 key> user@host' per line)")
    return keys


def verify_signature(key: tuple[int, int], token: bytes, signature: bytes) -> bool:
    """The host signs the token as if it were a SHA-1 digest (PKCS#1 v1.5)."""
    n, e = key
    size = (n.bit_length() + 7) // 8
    if len(signature) != size:
        return False
    s = int.from_bytes(signature, "big")
    if s >= n:
        return False
    m = pow(s, e, n).to_bytes(size, "big")
    expected = SHA1_DIGEST_INFO + token
    pad = size - len(expected) - 3
    return m == b"\x00\x01" + b"\xff" * pad + b"\x00" + expected


class VirtualAdbDevice:
    """Serve one virtual board tree over ADB on 127.0.0.1:<port> (ephemeral by default)."""

    def __init__(self, tree: str | Path, port: int = 0, root: bool = True, su: str = "grant",
                 selinux: str = "Enforcing", known_keys: list[bytes] | None = None,
                 on_notice: Callable[[str], None] | None = None) -> None:
        self.tree = Path(tree)
        self.root = root
        self.su = su
        self.selinux = selinux
        self.eacces: set[str] = set()
        self.stall_s = 0.0
        self.drop_next = False
        # None: trust the first key presented; a list: only those keys
        self.keys_fixed = known_keys is not None
        self.known_keys = [parse_adb_public_key(k) for k in (known_keys or [])]
        self.accepted_keys: list[bytes] = []  # public keys accepted through RSAPUBLICKEY
        self.refused_keys: list[str] = []  # fingerprints (or reasons) of refused hosts, the latest ones
        self._announced: set[str] = set()
        self.commands: list[str] = []
        self.connections = 0
        self.on_notice = on_notice  # None: log (acceptances at INFO, refusals at WARNING)
        self._kernel = VirtualKernel(self.tree)  # writes go through the kernel's rules
        board = self._kernel.board
        self._fs = PhoneFS(self.tree)
        self._props = {
            "ro.product.model": "VirtualAdbDevice", "ro.product.name": "dvfs_test",
            "ro.product.device": "virt", "ro.product.board": board.name, "ro.hardware": "virtual",
            "ro.build.version.release": "14", "ro.build.version.sdk": "34", "ro.debuggable": "1",
        }
        self._lock = threading.Lock()  # one shell command at a time, like the old per-command sh
        self._keys_lock = threading.Lock()
        self._stop = threading.Event()
        self._clients: list[socket.socket] = []
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._srv.bind((LISTEN_HOST, port))
        except OSError as exc:
            self._srv.close()
            raise OSError(exc.errno, f"cannot listen on {LISTEN_HOST}:{port}: {exc.strerror} "
                                     "(another virtual phone or adb there? choose another with --port)") from None
        self._srv.listen(8)
        self.port = self._srv.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def address(self) -> str:
        return f"{LISTEN_HOST}:{self.port}"

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
        if length > MAX_PAYLOAD:
            raise ConnectionError(f"message of {length} bytes (at most {MAX_PAYLOAD})")
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
            if len(self._clients) >= MAX_CONNECTIONS:
                client.close()
                continue
            self.connections += 1
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._session(sock)
        except (ConnectionError, OSError, struct.error, ValueError):
            pass  # the host went away or spoke garbage: drop it, keep serving others
        except Exception as exc:  # never let one connection take the server down
            log.warning("virtual phone: dropped a connection: %s: %s", type(exc).__name__, exc)
        finally:
            try:
                sock.close()
            except OSError:
                pass
            if sock in self._clients:
                self._clients.remove(sock)

    # ---- authentication -----------------------------------------------------------------------
    def _authenticate(self, sock: socket.socket) -> bool:
        token = os.urandom(20)
        self._send(sock, A_AUTH, AUTH_TOKEN, 0, token)
        signed: list[tuple[bytes, bytes]] = []  # (token, signature) pairs the host sent
        for _ in range(MAX_AUTH_MESSAGES):
            cmd, kind, _, data = self._read(sock)
            if cmd != A_AUTH:
                return False
            if kind == AUTH_SIGNATURE:
                with self._keys_lock:
                    known = list(self.known_keys)
                if any(verify_signature(k, token, data) for k in known):
                    return True
                signed.append((token, data))
                token = os.urandom(20)
                self._send(sock, A_AUTH, AUTH_TOKEN, 0, token)
            elif kind == AUTH_RSAPUBLICKEY:
                return self._offer_public_key(data, signed)
            else:
                return False
        self._refuse(None, f"more than {MAX_AUTH_MESSAGES} authentication attempts")
        return False

    def _offer_public_key(self, data: bytes, signed: list[tuple[bytes, bytes]]) -> bool:
        """A host asks for its key to be allowed (what the "Allow USB debugging?" dialog answers)."""
        try:
            key = parse_adb_public_key(data)
        except ValueError as exc:
            self._refuse(None, f"malformed public key ({exc})")
            return False
        fp, who = key_fingerprint(data), key_comment(data)
        if not any(verify_signature(key, t, s) for t, s in signed):
            self._refuse(fp, f"{who}: it did not prove it holds the private key (no valid signature)")
            return False
        with self._keys_lock:
            if key in self.known_keys:
                return True
            if self.keys_fixed:
                self._refuse(fp, f"{who}: not in the keys file")
                return False
            if self.accepted_keys:
                self._refuse(fp, f"{who}: only the first key presented is trusted (give --keys FILE to choose)")
                return False
            self.known_keys.append(key)
            self.accepted_keys.append(data)
        self._notice(f"accepted ADB key {fp} ({who or 'no name'}): the first key presented; any other "
                     "key will be refused (give --keys FILE to choose the keys)", logging.INFO)
        return True

    def _refuse(self, fp: str | None, why: str) -> None:
        self.refused_keys.append(fp or why)
        del self.refused_keys[:-MAX_REFUSALS_KEPT]
        message = f"refused ADB key {fp}: {why}" if fp else f"refused an ADB host: {why}"
        if message in self._announced:  # a host retrying in a loop is announced once, not a flood
            return
        if len(self._announced) < MAX_REFUSALS_KEPT:
            self._announced.add(message)
        self._notice(message, logging.WARNING)

    def _notice(self, message: str, level: int) -> None:
        if self.on_notice is not None:
            self.on_notice(message)
        else:
            log.log(level, "%s", message)

    # ---- streams --------------------------------------------------------------------------------
    def _session(self, sock: socket.socket) -> None:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)  # a host that stalls the handshake is dropped
        cmd, version, maxdata, _banner = self._read(sock)
        if cmd != A_CNXN:
            return
        version, maxdata = min(version, VERSION), max(min(maxdata, MAX_PAYLOAD), 4096)
        if not self._authenticate(sock):
            return
        sock.settimeout(None)
        banner = b"device::ro.product.name=dvfs_test;ro.product.model=VirtualAdbDevice;ro.product.device=virt;"
        self._send(sock, A_CNXN, version, maxdata, banner)
        next_id = 1
        while True:
            cmd, a0, a1, data = self._read(sock)
            if cmd != A_OPEN:
                continue  # stray OKAY/CLSE/WRTE for finished streams
            local, remote = next_id, a0
            next_id += 1
            service = data.rstrip(b"\0").decode("utf-8", "replace")
            if not service.startswith("shell:"):  # no sync:, root:, tcpip:, shell,v2: ...
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
                    if c in (A_OKAY, A_CLSE):
                        break
            self._send(sock, A_CLSE, local, remote)

    # ---- the shell ----------------------------------------------------------------------------
    def _run_shell(self, command: str) -> bytes:
        with self._lock:
            self.commands.append(command)
            if self.stall_s:
                self._stop.wait(self.stall_s)
            props = {**self._props, "ro.secure": "0" if self.root else "1"}
            phone = Phone(self._fs, self._kernel.write, self._kernel.catch_up, root=self.root, su=self.su,
                          selinux=self.selinux, eacces=set(self.eacces), props=props)
            try:
                output, _status = run_command(phone, command)
            except Exception as exc:  # a bug in the interpreter must not kill the connection
                log.warning("virtual phone: %r failed: %s: %s", command[:80], type(exc).__name__, exc)
                output = b"/system/bin/sh: internal error\n"
            return output
