"""The governor daemon: serves the socket protocol on a Unix socket until SIGTERM/SIGINT.

The asyncio loop parses lines and moves bytes, and answers on the spot what needs no waiting: a
frame at the pair in force (the common case: a bisection on a cached frontier), a report, a status.
Nothing slow runs on it, so one client cannot hold up another:

* a frame that needs a write runs on a small thread pool (the governor keeps its own lock for
  bookkeeping and does backend I/O outside it, one operation at a time, so a stalled phone delays
  only the frame that asked for the write);
* a grid for a new context length (~20 ms of numpy) is computed in a worker process, so a burst of
  them cannot take the interpreter lock from the loop;
* requests on one connection are answered in order, at most ``BATCH_LINES`` per round of the loop,
  so a client flooding pipelined requests gets its turn among the others, not ahead of them;
* connections, apps and frames per client are bounded; a client that reads none of its replies is
  read no more and then disconnected, and a client that goes away takes its frames in flight (and
  their floors) with it.

Per request there is no task, coroutine or future (connections are ``asyncio.Protocol``s), and
the replies to one chunk of requests leave in one write. Lines longer than ``MAX_LINE_BYTES`` are
answered with an error and skipped; the connection stays usable. When no frame was asked for for
``idle_release_s``, or every client that asked for frames has gone, the domains are handed back
(``idle_policy``) and taken again by the next frame. On the way out the original governors and
limits are restored and the socket is removed.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import gc
import grp
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path

from governor.core import (
    WRITE_QUEUE_S,
    Governor,
    GovernorError,
    LatestPerModel,
    NeedsBackend,
    NeedsWrite,
    WriteUnderWay,
    compute_grid,
)
from governor.protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    BeforeFrame,
    FastBeforeFrame,
    ProtocolError,
    encode,
    encode_decision,
    encode_done,
    error,
    parse_request,
)
from sysfs_backends.sysfs import BackendError

log = logging.getLogger(__name__)
DECISION_THREADS = 4
SHUTDOWN_GRACE_S = 2.0
BATCH_LINES = 32  # lines of one client answered per round of the loop before the others' turn
MAX_QUEUED_LINES = 256  # complete lines held per client before it is read no more
READ_BUFFER_BYTES = 64 * 1024

async def _within(aw, timeout_s: float):
    """``aw`` or TimeoutError after ``timeout_s``. Unlike ``asyncio.wait_for`` on Python 3.11 it
    never swallows a cancellation that races the result (which once hung shutdown)."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    finally:
        if not task.done():
            task.cancel()
    if not done:
        raise TimeoutError
    return task.result()


# ---- the grid worker process -------------------------------------------------------------
_worker_job: tuple | None = None


def _grid_worker_init(job: tuple, daemon_pid: int) -> None:
    """In the worker: Ctrl-C in a terminal reaches the whole process group; the daemon stops the
    worker itself, so the worker ignores it (no KeyboardInterrupt traceback on the way out). If the
    daemon is killed outright the worker notices it was orphaned and exits."""
    global _worker_job
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_job = job
    def _orphaned() -> None:  # the daemon was SIGKILLed: nothing of ours may stay behind
        while os.getppid() == daemon_pid:  # (killed before this ran: already reparented)
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=_orphaned, name="orphan-watch", daemon=True).start()


def _grid_worker_ping() -> bool:
    return _worker_job is not None


def _grid_worker(key: tuple[str, int | None]):
    models, board, freq_rank = _worker_job
    return compute_grid(models[key[0]], board, freq_rank, key[1])
class SocketInUse(RuntimeError):
    pass


def _claim_socket(path: Path) -> None:
    """Refuse if a live daemon answers on ``path``; remove a stale socket file, and nothing else.

    A regular file, a directory, a symlink (even to a socket) or a socket we may not connect to
    at that path is not ours to delete: refuse with a message saying what is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
            else "a regular file" if stat.S_ISREG(st.st_mode) else None if stat.S_ISSOCK(st.st_mode)
            else "not a socket")
    if what is not None:
        raise SocketInUse(f"{path}: {what} is in the way of the governor's socket; it is not ours, so it is "
                          "left alone: remove it yourself or choose another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:  # nobody listens: a socket left by a killed run
        try:
            again = os.lstat(path)
        except FileNotFoundError:
            return
        if (again.st_ino, again.st_dev) == (st.st_ino, st.st_dev):
            os.unlink(path)
        return
    except OSError as exc:
        raise SocketInUse(f"{path}: a socket we cannot probe ({exc.strerror or exc}); it is left alone: "
                          "remove it yourself or choose another --socket") from None
    else:
        pid = _peer_pid(probe)
    finally:
        probe.close()
    who = f" (pid {pid})" if pid else ""
    raise SocketInUse(f"{path}: another governor{who} is already serving this socket")


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process listening on a connected Unix socket (SO_PEERCRED), if known."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0] or None
    except (OSError, AttributeError):
        return None


def _socket_gid(group: str | None) -> int:
    """The group id the socket is given (-1: leave the daemon's own group)."""
    if group is None:
        return -1
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"socket_group {group!r}: no such group on this system") from None


def _make_socket_folder(path: Path) -> None:
    """Create the socket's missing folders 0755 whatever the umask (root's is often 077): apps of
    socket_group must be able to reach the socket; the socket's own mode decides who connects."""
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in missing:
            os.chmod(folder, 0o755)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the socket's folder {path.parent}: {exc.strerror}",
                      str(path)) from None


def _set_socket_permissions(path: Path, mode: int, gid: int) -> None:
    """Give the socket its group and mode, so that apps of that group connect without root."""
    if gid != -1:
        try:
            os.chown(path, -1, gid)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot give the socket to group id {gid}: {exc.strerror} (the daemon "
                          "must run as root or as a member of socket_group)", str(path)) from None
    os.chmod(path, mode)


class _Client(asyncio.BufferedProtocol):
    """One connection: the governor's ``owner`` of the frames it opens.

    An ``asyncio.BufferedProtocol`` rather than a stream and a task: the common request (a frame at the
    pair in force, a report, a status) is answered inside ``data_received``, with no task, future
    or coroutine per request, and every reply to one chunk of requests goes out in one write.
    Requests are answered in order: one that needs backend I/O or a new grid is handed to a task,
    and the lines after it wait until it is answered. Lines are read in bounded batches, so a
    client flooding pipelined requests gets its turn among the others, not ahead of them; and
    when its replies pile up unread, it is read no more and, after ``client_write_timeout_s``,
    disconnected."""

    _ids = itertools.count(1)

    def __init__(self, daemon: Daemon) -> None:
        self.id = next(self._ids)
        self.daemon = daemon
        self.transport: asyncio.Transport | None = None
        self.asked_frames = False
        self._lines: collections.deque[bytes] = collections.deque()  # complete, not yet answered
        self._tail = b""  # the start of a line whose newline has not come yet
        self._discarding = False  # inside an over-long line: skip up to its newline
        self._busy = False  # a request is being answered by a task: later lines wait
        self._blocked = False  # replies pile up unread (the transport asked us to pause)
        self._scheduled = False  # a continuation of the batch is queued on the loop
        self._reading = True
        self._give_up: asyncio.TimerHandle | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"client#{self.id}"

    # ---- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.daemon._connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next read goes: one buffer for every connection (the loop reads into it and
        hands it over at once). A plain Protocol gets each read as a fresh 256 KiB bytes object
        (asyncio's read size), allocated and freed per request: measured 24 us of loop CPU per
        echoed request against 10 us this way, until malloc adapts to the pattern."""
        return self.daemon.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.daemon.read_buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self._tail:
            data = self._tail + data
        parts = data.split(b"\n")
        tail = parts.pop()
        for line in parts:
            if self._discarding:  # the end of an over-long line
                self._discarding = False
                continue
            if len(line) > MAX_LINE_BYTES:
                self._lines.append(_TOO_LONG)
            elif line.strip():
                self._lines.append(line)
        if len(tail) > MAX_LINE_BYTES:
            if not self._discarding:
                self._lines.append(_TOO_LONG)
                self._discarding = True
            tail = b""
        self._tail = tail
        if not self._scheduled:  # else the queued continuation takes these lines in their turn
            self._answer_lines()

    def pause_writing(self) -> None:
        """Our replies fill the socket: the client is not reading them. Stop answering it; if it
        does not catch up in time, disconnect it."""
        self._blocked = True
        self._set_reading(False)
        if self._give_up is None:
            self._give_up = asyncio.get_running_loop().call_later(
                self.daemon.settings.client_write_timeout_s, self._not_reading)

    def resume_writing(self) -> None:
        self._blocked = False
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None
        if not self._scheduled:
            self._answer_lines()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._give_up is not None:
            self._give_up.cancel()
        self.daemon._disconnected(self)

    # ---- answering -------------------------------------------------------------------------
    def _set_reading(self, on: bool) -> None:
        if on != self._reading and not self._closed:
            self._reading = on
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _not_reading(self) -> None:
        self._give_up = None
        log.info("%s: disconnected (reset, or not reading its replies)", self)
        self.close(abort=True)

    def _answer_lines(self) -> None:
        """Answer the waiting lines, at most ``BATCH_LINES`` now (the rest on the loop's next
        round), all replies in one write; stop at a request that needs a task."""
        self._scheduled = False
        lines = self._lines
        out = []
        answered = 0
        while lines and not (self._busy or self._blocked or self._closed):
            if answered >= BATCH_LINES:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._answer_lines)
                break
            line = lines.popleft()
            answered += 1
            reply = self.daemon.answer_now(line, self)
            if reply is None:  # handed to a task, which answers and then resumes this queue
                self._busy = True
                break
            out.append(reply)
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        # read more only while few lines wait: a flood stays in the client's socket, not here
        self._set_reading(len(lines) < MAX_QUEUED_LINES and not self._blocked)

    def answered_later(self, reply: bytes) -> None:
        """The reply of the request a task answered; the lines after it go on."""
        self._busy = False
        if self._closed:
            return
        self.transport.write(reply)
        if not self._scheduled:
            self._answer_lines()

    def close(self, abort: bool = False) -> None:
        if self.transport is not None and not self._closed:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


_TOO_LONG = object()  # stands for an over-long line in a client's queue


class Daemon:
    def __init__(self, governor: Governor, socket_path: str | Path, socket_mode: int = 0o660,
                 socket_group: str | None = None) -> None:
        self.governor = governor
        self.settings = governor.settings
        self.socket_path = Path(socket_path)
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self._stop: asyncio.Event | None = None
        self._threads = concurrent.futures.ThreadPoolExecutor(DECISION_THREADS, thread_name_prefix="decide")
        self._grids: concurrent.futures.Executor | None = None
        self._grid_worker_ready = False
        self._grid_pending: dict[tuple, asyncio.Future] = {}
        self._ahead = LatestPerModel()  # grids computed ahead in the worker, one per model at a time
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop serving, once it does
        self._clients: dict[_Client, None] = {}  # connected, in order
        self._tasks: set[asyncio.Task] = set()  # requests being answered off the loop
        self.read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))  # see _Client.get_buffer
        self._any_asked = False  # some client has asked for a frame
        # frames asked while another decision's write was under way, answered on the loop once it
        # ends (``_unpark``), in the order they came
        self._parked: list[tuple[BeforeFrame | FastBeforeFrame, _Client]] = []
        self._unpark_timer: asyncio.TimerHandle | None = None
        self._writes_asked = 0  # frames sent to a decision thread to write their point, not answered yet
        self._idle_event: asyncio.Event | None = None

    # ---- requests ------------------------------------------------------------------------
    async def _call(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    async def _ensure_grid(self, key: tuple) -> None:
        """Compute a missing grid off the loop (in the worker process), once per key however many
        requests want it at the same time."""
        pending = self._grid_pending.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        pending = asyncio.get_running_loop().create_future()
        self._grid_pending[key] = pending
        try:
            self.governor.add_grid(key, await self._compute_grid(key))
            pending.set_result(None)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: the waiters (if any) get it too
            raise
        finally:
            self._grid_pending.pop(key, None)

    async def _compute_grid(self, key: tuple):
        loop = asyncio.get_running_loop()
        if self._grids is not None and self._grid_worker_ready:
            try:
                return await loop.run_in_executor(self._grids, _grid_worker, key)
            except concurrent.futures.process.BrokenProcessPool:
                log.warning("the grid worker process died; computing grids in a thread from now on")
                self._grids = None
        return await loop.run_in_executor(self._threads, compute_grid, *self.governor.grid_job(key))

    def answer_now(self, line: bytes | object, client: _Client) -> bytes | None:
        """The encoded reply to one request line, answered here on the loop; None when it waits for
        another decision's write, needs backend I/O or a grid not computed yet: then it is answered
        later (``client.answered_later``)."""
        if line is _TOO_LONG:
            return encode(error("line_too_long", f"a request line is at most {MAX_LINE_BYTES} bytes"))
        try:
            req = parse_request(line)
            op = req.op
            if op == "before_frame":
                if not client.asked_frames:  # a client asks for frames once it names a known model
                    self.governor.grid_key(req.model, req.context_len)
                    client.asked_frames = self._any_asked = True
                return self._frame_on_loop(req, client)
            if op == "after_frame":
                # bookkeeping only (never backend I/O): answered on the loop
                done = self.governor.after_frame(req.frame, req.latency_ms, owner=client, failed=req.failed)
                return encode_done(done)
            st = self.governor.status()
            return encode({"ok": True, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                           "clients": len(self._clients), **st})
        except Exception as exc:  # noqa: BLE001 - sorted out below; never let one request take the daemon down
            return encode(self._error_reply(exc))

    def _frame_on_loop(self, req: BeforeFrame | FastBeforeFrame, client: _Client) -> bytes | None:
        """The encoded decision of a frame answered here on the loop (the common frame: grid
        cached, same pair); None when it waits for another decision's write (parked) or went to
        a task (a write of its own or a new grid, so a slow backend blocks no one)."""
        try:
            d = self.governor.before_frame(req.model, req.deadline_ms, req.context_len, req.app,
                                           owner=client, may_block=False)
        except WriteUnderWay:  # the point is about to change: answered here once it has
            self._park(req, client)
            return None
        except NeedsWrite:
            self._writes_asked += 1
            self._spawn(self._answer_later(req, client, writes=True))
            return None
        except NeedsBackend:
            self._spawn(self._answer_later(req, client))
            return None
        return encode_decision(d)

    def _park(self, req: BeforeFrame | FastBeforeFrame, client: _Client) -> None:
        """Hold a frame asked during another decision's write until the write ends (the governor's
        ``on_writes_done``), or for the longest a frame waits behind one (then the governor answers
        it at what is in force). Parked on the loop, not in a decision thread: under 32 apps at
        120 fps dozens of frames come during one write, and a thread each (its hand-over, and the
        decision made again there) took the CPU the write itself needed."""
        self._parked.append((req, client))
        if self._unpark_timer is None:
            self._unpark_later()

    def _unpark_later(self) -> None:
        """The longest the parked frames wait: then they are answered, whatever is asked."""
        self._unpark_timer = self._loop.call_later(WRITE_QUEUE_S, self._unpark, False)

    def _writes_done(self, join: bool = False) -> None:
        """The governor's ``on_writes_done`` (any thread, must not block): answer the parked frames;
        ``join``: the governor takes them into the write under way, none is held back."""
        try:
            self._loop.call_soon_threadsafe(self._unpark, not join)
        except RuntimeError:  # the loop has closed: nobody is parked any more
            pass

    def _unpark(self, hold: bool = True) -> None:
        """Answer the parked frames, in the order they came, at what is in force now; those that
        now need a write of their own go to a task like any other. Once one has (``hold``), the
        rest stay parked until its write has ended: they would wait for it anyway, and deciding
        each here first took the loop's time the write needed. Measured at the onset of 32 apps
        at 120 fps: after each of the three writes that raised the point, every one of the ~20
        frames parked behind it needed a write too (~150 us each here, ~3 ms in all), and their
        threads then contended for the interpreter (5-9 ms each, wall). The 50 ms timer and the
        governor's call to join a write (``hold`` false) answer them whatever is asked."""
        if self._stop is not None and self._stop.is_set():  # stopping: their clients are being closed
            return
        if self._unpark_timer is not None:
            self._unpark_timer.cancel()
            self._unpark_timer = None
        parked, self._parked = self._parked, []
        for n, (req, client) in enumerate(parked):
            if hold and self._writes_asked:
                self._parked.extend(parked[n:])
                self._unpark_later()
                return
            if client._closed:
                continue
            try:  # parked again if another write began meanwhile
                reply = self._frame_on_loop(req, client)
            except Exception as exc:  # noqa: BLE001 - sorted out in _error_reply
                reply = encode(self._error_reply(exc))
            if reply is not None:
                client.answered_later(reply)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _compute_ahead(self, key: tuple) -> None:
        """The governor's ``compute_ahead``: the grid a language model's coming frames will want,
        computed in the grid worker. Called from a decision (on the loop, or in a decision
        thread): scheduled on the loop."""
        self._loop.call_soon_threadsafe(self._compute_ahead_on_loop, key)

    def _compute_ahead_on_loop(self, key: tuple) -> None:
        """One grid computed ahead per model at a time; asked for meanwhile, only the latest is
        computed next (``LatestPerModel``)."""
        if key in self._grid_pending or self.governor.has_grid(key) or not self._ahead.offer(key):
            return
        self._spawn(self._compute_ahead_in_turn(key))

    async def _compute_ahead_in_turn(self, key: tuple | None) -> None:
        model = key[0]
        try:
            while key is not None:
                if key not in self._grid_pending and not self.governor.has_grid(key):
                    await self._ensure_grid_quietly(key)
                key = self._ahead.next(model)
        finally:
            self._ahead.release(model)

    async def _ensure_grid_quietly(self, key: tuple) -> None:
        try:
            await self._ensure_grid(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - only a head start: the frame that needs it computes it again
            log.exception("computing the grid of %s ahead", key)

    async def _answer_later(self, req: BeforeFrame | FastBeforeFrame, client: _Client, writes: bool = False) -> None:
        """Decide a frame off the loop; ``writes``: its decision on the loop found a point to write
        (``_writes_asked``: the frames parked meanwhile are answered once it is done)."""
        try:
            await self._decide_later(req, client)
        finally:
            if writes:
                self._writes_asked -= 1
                if self._parked and not self._writes_asked:
                    self._unpark()

    async def _decide_later(self, req: BeforeFrame | FastBeforeFrame, client: _Client) -> None:
        try:
            key = self.governor.grid_key(req.model, req.context_len)
            if not self.governor.has_grid(key, stand_in=True):
                await self._ensure_grid(key)
            d = await self._call(self.governor.before_frame, req.model, req.deadline_ms, req.context_len,
                                 req.app, owner=client)
            reply = encode_decision(d)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted out in _error_reply
            client.answered_later(encode(self._error_reply(exc)))
            return
        # the frame begins once its app has the reply: its place in the GPU queue counts from the
        # moment before the reply is written. Taken after it, the time was later than the frame's
        # start on the board in a tenth of the demo's frames, by up to 4 ms: the app had the
        # reply and began while this thread waited for the interpreter (other threads hold it
        # for up to its 5 ms switch interval)
        sent_at = time.monotonic()
        client.answered_later(reply)
        self.governor.reply_sent(d.frame, sent_at)

    @staticmethod
    def _error_reply(exc: Exception) -> dict:
        if isinstance(exc, ProtocolError | GovernorError):
            return error(exc.code, str(exc))
        if isinstance(exc, OSError | BackendError):  # the backend could not write: report, keep serving
            log.error("backend: %s", exc)
            return error("backend_error", str(exc))
        log.error("internal error", exc_info=exc)
        return error("internal", f"{type(exc).__name__}: {exc}")

    # ---- connections -----------------------------------------------------------------------
    def _connected(self, client: _Client) -> None:
        if len(self._clients) >= self.settings.max_clients:
            client.transport.write(encode(error("too_many_clients", f"{len(self._clients)} clients are "
                                                "connected, the most allowed (settings.max_clients)")))
            client.close()
            return
        self._clients[client] = None

    def _disconnected(self, client: _Client) -> None:
        if self._clients.pop(client, False) is False:
            return  # refused at connection: never counted
        try:
            dropped = self.governor.drop_client(client)
        except Exception:  # noqa: BLE001 - must not fail a disconnect
            log.exception("dropping %s", client)
            dropped = 0
        if dropped:
            log.info("%s went away: %d frames in flight dropped", client, dropped)
        if client.asked_frames and not any(c.asked_frames for c in self._clients):
            self._wake_idle()

    # ---- idle release ----------------------------------------------------------------------
    def _wake_idle(self) -> None:
        if self._idle_event is not None:
            self._idle_event.set()

    async def _idle_watch(self) -> None:
        """Hand the domains back when nothing needs them: no frame for ``idle_release_s``, or
        every client that asked for frames has disconnected."""
        gov, s = self.governor, self.settings
        if s.idle_policy == "keep":
            return
        period = min(1.0, s.idle_release_s / 4)
        while not self._stop.is_set():
            try:
                await _within(self._idle_event.wait(), period)
            except TimeoutError:
                pass
            self._idle_event.clear()
            if gov.released:
                continue
            quiet = time.monotonic() - gov.last_frame_at >= s.idle_release_s
            nobody = self._any_asked and not any(c.asked_frames for c in self._clients)
            if quiet or nobody:
                done = await self._call(gov.release_idle)
                if done is not None:
                    why = f"no frame for {s.idle_release_s:g} s" if quiet else "every app disconnected"
                    log.info("idle (%s): domains handed back", why)

    async def _refresh_loop(self) -> None:
        """Re-read the frequencies in force every ``state_refresh_s`` (caps, other agents) on a
        decision thread, so no client's request pays for it."""
        while not self._stop.is_set():
            try:
                await _within(self._stop.wait(), self.settings.state_refresh_s)
            except TimeoutError:
                pass
            if not self._stop.is_set():
                await self._call(self.governor.refresh)

    # ---- serving ---------------------------------------------------------------------------
    def _grid_worker_started(self, fut: concurrent.futures.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            log.warning("the grid worker process did not start; grids are computed in a thread")
            return
        self._grid_worker_ready = True

    def _start_grid_worker(self) -> None:
        try:
            ctx = multiprocessing.get_context("spawn")
            job = self.governor.grid_inputs()
            self._grids = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=ctx, initializer=_grid_worker_init, initargs=(job, os.getpid()))
            # the worker takes a second or more to start: until it answers, grids are computed in
            # a thread (slower for others, but no frame waits for a process to start)
            warm = self._grids.submit(_grid_worker_ping)
            warm.add_done_callback(self._grid_worker_started)
        except (OSError, ValueError) as exc:
            log.warning("no grid worker process (%s): grids are computed in a thread", exc)
            self._grids = None

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        self._stop = asyncio.Event()
        self._idle_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        gid = _socket_gid(self.socket_group)
        _make_socket_folder(self.socket_path)
        _claim_socket(self.socket_path)
        for name, est in self.governor.models.items():  # fixed-shape models: one grid each, now
            if not est.is_language_model:
                self.governor.before_start_grid(name)
        self._start_grid_worker()
        # created with no more than socket_mode allows, so it is never looser, even for an instant
        old_umask = os.umask(0o777 & ~self.socket_mode)
        try:
            server = await loop.create_unix_server(lambda: _Client(self), path=str(self.socket_path))
        finally:
            os.umask(old_umask)
        try:
            _set_socket_permissions(self.socket_path, self.socket_mode, gid)
        except OSError:
            server.close()
            self.socket_path.unlink(missing_ok=True)
            raise
        ours = os.lstat(self.socket_path)
        log.info("serving %s", self.socket_path)
        self.governor.inline_refresh = False  # re-read on the schedule below, not in a client's request
        self._loop = loop
        self.governor.compute_ahead = self._compute_ahead  # in the grid worker, not a thread of ours
        self.governor.on_writes_done = self._writes_done
        self.governor.write_wait_s = self.settings.backend_wait_s  # a stalled phone holds no client long
        self.governor.replies_reported = True  # _decide_later reports each written frame's reply
        idle = asyncio.create_task(self._idle_watch())
        refresh = asyncio.create_task(self._refresh_loop())
        # what start-up allocated (estimators, grids, schemas) is kept for good: the collector's
        # full passes need not walk it again, which would stall requests for milliseconds
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            log.info("stopping (%d clients connected)", len(self._clients))
            self.governor.on_writes_done = None
            if self._unpark_timer is not None:
                self._unpark_timer.cancel()
            server.close()
            idle.cancel()
            refresh.cancel()
            await asyncio.gather(idle, refresh, return_exceptions=True)
            await self._close_clients()
            try:  # only the socket we made: something else may have taken the name since
                now = os.lstat(self.socket_path)
                if (now.st_ino, now.st_dev) == (ours.st_ino, ours.st_dev):
                    self.socket_path.unlink()
            except FileNotFoundError:
                pass
            self._threads.shutdown(wait=False, cancel_futures=True)
            if self._grids is not None:
                await self._stop_grid_worker()

    async def _stop_grid_worker(self) -> None:
        """Stop the grid worker process and wait (a moment at most) for the pool's own thread to
        end. Left running (``shutdown(wait=False)``), that thread closed its wake-up pipe while
        the interpreter's exit handler wrote to it: once in about thirty stops after a busy run,
        an ``OSError: Bad file descriptor`` traceback on the way out (CPython 3.11's
        ``concurrent.futures``). A grid still being computed is not waited for beyond the grace."""
        grids, self._grids = self._grids, None
        stopping = threading.Thread(target=grids.shutdown, kwargs={"wait": True, "cancel_futures": True},
                                    name="grid-worker-stop", daemon=True)
        stopping.start()
        for _ in range(int(SHUTDOWN_GRACE_S / 0.01)):
            if not stopping.is_alive():
                return
            await asyncio.sleep(0.01)

    async def _close_clients(self) -> None:
        """Close every connection, give requests still being answered (a write to a stalled
        backend) a moment, then stop waiting for them (no tracebacks on the way out)."""
        for client in list(self._clients):
            client.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE_S)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for _ in range(100):  # let the transports report their connections lost
            if not self._clients:
                break
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


def run_daemon(governor: Governor, socket_path: str | Path, socket_mode: int = 0o660,
               socket_group: str | None = None) -> None:
    """Start the governor, serve until a signal, and always restore the original settings."""
    governor.start()
    try:
        asyncio.run(Daemon(governor, socket_path, socket_mode, socket_group).serve())
    finally:
        for line in governor.stop():
            log.info("restored %s", line)
