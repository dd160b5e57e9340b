//! The volume's staging writer.
//!
//! An upload is written with direct I/O (`O_DIRECT`) when the filesystem
//! takes it: the bytes go from an aligned buffer of ours straight to the
//! device, so the kernel does not copy every byte into the page cache (the
//! largest single cost of an upload before), and the final `fdatasync` has
//! only metadata left to flush. A filesystem that refuses `O_DIRECT` (at
//! `open`, or with `EINVAL` on the first write) gets ordinary buffered writes
//! with writeback started every [`WRITEBACK_EVERY`] bytes, as before.
//!
//! Two buffers of [`BUF`] bytes per upload: one fills while the other is
//! hashed and written on the blocking pool, so receiving, hashing and the
//! disk write overlap, and memory stays bounded whatever the size. The full
//! buffers of one upload go to one task of the blocking pool, which takes
//! buffer after buffer from the writer ([`Pipe`]) and goes back to the pool
//! once none has come for [`IDLE`]: a new pool task per buffer cost a
//! wake-up through the pool's shared queue (contended by every upload) and
//! often a new thread. Direct I/O needs the
//! buffer address, the file offset and the length aligned to [`ALIGN`]:
//!
//! * every buffer starts at an aligned file offset. Resuming at an unaligned
//!   offset reads the partial block before it back into the buffer, and
//!   writes it again with what follows;
//! * a full buffer is a multiple of [`ALIGN`]; at `finish` the aligned part
//!   of the last buffer is written directly and the tail (under [`ALIGN`]
//!   bytes) through the page cache, after clearing `O_DIRECT` with `fcntl`.
//!
//! A writer dropped while a write is in flight (an upload refused or cut
//! mid-body) cannot wait for it, so every writer holds an exclusive `flock`
//! on its staging file, released only when the last write has finished and
//! the descriptor is closed: [`open`] of the same staging file waits for it
//! (bounded by [`LOCK_WAIT`]) before it truncates or appends, and a late
//! write can never land on the data of the writer that follows.

use std::{
    alloc::{self, Layout},
    fs::File,
    os::{
        fd::AsRawFd,
        unix::fs::{FileExt, OpenOptionsExt},
    },
    path::Path,
    ptr::NonNull,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;

use super::super::{BlobError, BlobResult, BlobWriter, SharedTap};

/// Alignment of buffers, offsets and lengths for direct I/O: the page size,
/// which is a multiple of every block device's logical block size in use.
pub const ALIGN: usize = 4096;
/// Default size of each of an upload's two buffers (a multiple of
/// [`ALIGN`]; `STOWAGE_UPLOAD_BUFFER`). Every buffer handed over costs a
/// wake-up of the blocking pool, a device request and its completion, so
/// larger buffers cost less CPU per byte and more memory per upload.
pub const BUF: usize = 256 * 1024;
/// Bounds of the buffer size.
pub const BUF_MIN: usize = 16 * 1024;
pub const BUF_MAX: usize = 16 * 1024 * 1024;
/// Buffered mode only: writeback of written data is started every this many
/// bytes (`sync_file_range`), so the final `fdatasync` waits only for the
/// tail instead of the whole file.
pub const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;
/// How long [`open`] waits for an earlier writer's last write to end.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);
/// A writer's task on the blocking pool goes back to the pool once no
/// buffer has come for this long (a slow client does not hold a thread).
pub const IDLE: Duration = Duration::from_millis(50);

/// A zero-initialised heap buffer aligned to [`ALIGN`], filled from the
/// front.
struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer is owned memory with no interior sharing; it moves
// between the writer and one blocking task at a time.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(cap: usize) -> AlignedBuf {
        let layout = Self::layout(cap);
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: 0 }
    }

    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, ALIGN).expect("buffer size and alignment are valid")
    }

    fn filled(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised (the whole buffer is).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn whole_mut(&mut self) -> &mut [u8] {
        // SAFETY: `cap` initialised bytes, owned exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Appends as much of `data` as fits; returns how much that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = (self.cap - self.len).min(data.len());
        let at = self.len;
        self.whole_mut()[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn is_full(&self) -> bool {
        self.len == self.cap
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

/// What a buffer's write gives back: the buffer, whether the file is still
/// in direct mode, and the result.
type Done = (AlignedBuf, bool, std::io::Result<()>);

/// One full buffer to hash and write.
struct Job {
    file: Arc<File>,
    tap: Option<SharedTap>,
    buf: AlignedBuf,
    /// File offset of the buffer's first byte.
    at: u64,
    direct: bool,
    /// Leading bytes the tap must not see.
    skip: usize,
    /// Buffered mode: start writeback from this offset to the buffer's end.
    writeback: Option<u64>,
    done: tokio::sync::oneshot::Sender<Done>,
    #[cfg(test)]
    slow: bool,
}

impl Job {
    fn run(self) {
        #[cfg(test)]
        if self.slow {
            std::thread::sleep(Duration::from_millis(100));
        }
        let Job {
            file,
            tap,
            buf,
            at,
            direct,
            skip,
            writeback,
            done,
            ..
        } = self;
        feed(&tap, &buf.filled()[skip..]);
        let (direct, res) = write_at(&file, buf.filled(), at, direct);
        if let (Some(from), Ok(()), false) = (writeback, &res, direct) {
            start_writeback(&file, from, at + buf.len as u64);
        }
        // The file is closed (and its lock released, once the writer's own
        // handle is gone too) before the writer hears of it.
        drop(file);
        // A writer that is gone no longer waits for its buffer.
        let _ = done.send((buf, direct, res));
    }
}

/// The hand-off between a writer and its task on the blocking pool: at
/// most one buffer waits (the writer waits for the previous one before it
/// hands over the next).
struct Pipe {
    shared: Arc<PipeShared>,
}

#[derive(Default)]
struct PipeShared {
    state: Mutex<PipeState>,
    wake: Condvar,
}

#[derive(Default)]
struct PipeState {
    job: Option<Job>,
    /// A pool task serves this pipe (it takes `job` before it ends).
    running: bool,
    /// The writer is gone: a waiting buffer is dropped, the task ends.
    closed: bool,
}

impl PipeShared {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            shared: Arc::default(),
        }
    }

    /// Hands `job` to the pipe's task, starting one if none runs.
    fn send(&self, job: Job) {
        let mut st = self.shared.lock();
        debug_assert!(st.job.is_none(), "one buffer at a time");
        st.job = Some(job);
        if st.running {
            drop(st);
            self.shared.wake.notify_one();
            return;
        }
        st.running = true;
        drop(st);
        let task = Serving {
            shared: self.shared.clone(),
            ended: false,
        };
        tokio::task::spawn_blocking(move || task.run());
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// The pipe's task on the blocking pool.
struct Serving {
    shared: Arc<PipeShared>,
    /// Left the loop normally, with `running` cleared under the lock.
    ended: bool,
}

impl Serving {
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        loop {
            if st.closed {
                st.job = None;
                break;
            }
            if let Some(job) = st.job.take() {
                drop(st);
                job.run();
                st = shared.lock();
                continue;
            }
            let (g, waited) = shared
                .wake
                .wait_timeout(st, IDLE)
                .unwrap_or_else(|p| p.into_inner());
            st = g;
            if waited.timed_out() && st.job.is_none() {
                break;
            }
        }
        st.running = false;
        self.ended = true;
    }
}

impl Drop for Serving {
    /// A task that never ran (the runtime is shutting down) or panicked:
    /// the waiting buffer is dropped, so its writer sees an error instead
    /// of waiting forever, and the next buffer starts a new task.
    fn drop(&mut self) {
        if !self.ended {
            let mut st = self.shared.lock();
            st.job = None;
            st.running = false;
        }
    }
}

/// Appends to one staging file; see the module docs.
pub struct LocalWriter {
    file: Arc<File>,
    /// The file is open with `O_DIRECT`.
    direct: bool,
    /// Filling; its first byte belongs at file offset `buf_at`.
    buf: AlignedBuf,
    buf_at: u64,
    /// The other buffer, when no write holds it.
    spare: Option<AlignedBuf>,
    /// The buffer being written, given back with the result.
    inflight: Option<tokio::sync::oneshot::Receiver<Done>>,
    /// Where full buffers go to be written.
    pipe: Pipe,
    /// Logical length: every byte staged so far, buffered ones included.
    len: u64,
    /// Fed each buffer on the blocking pool before it is written.
    tap: Option<SharedTap>,
    /// Leading bytes of the current buffer the tap must not see (the
    /// partial block read back on an unaligned resume).
    tap_skip: usize,
    /// Buffered mode: file offset up to which writeback has been started.
    written_back: u64,
    /// Counts this writer among its store's open ones while it lives.
    _count: Option<super::WriterCount>,
    #[cfg(test)]
    slow: bool,
}

/// How [`open`] opens a staging file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Through the page cache.
    Buffered,
    /// `O_DIRECT` where the filesystem takes it, else buffered.
    Direct,
    /// As a filesystem that refuses `O_DIRECT` at `open` (`EINVAL`).
    #[cfg(test)]
    Refused,
    /// Direct, each buffer's write starting 100 ms late (a busy blocking
    /// pool), to show that a late write never lands after the next writer.
    #[cfg(test)]
    Slow,
}

/// Opens staging file `path` for appending at `offset` (0 creates or
/// empties it; otherwise it is cut back to `offset`, and fewer bytes staged
/// than that is `NotFound`). Returns the writer and whether the filesystem
/// refused direct I/O at `open`. `buf`: the size of each buffer, a
/// multiple of [`ALIGN`] within [`BUF_MIN`]..=[`BUF_MAX`].
pub async fn open(
    path: &Path,
    offset: u64,
    mode: Mode,
    buf: usize,
) -> BlobResult<(LocalWriter, bool)> {
    debug_assert!(buf % ALIGN == 0 && (BUF_MIN..=BUF_MAX).contains(&buf));
    let buf_size = buf;
    let p = path.to_path_buf();
    let (file, direct, refused) = tokio::task::spawn_blocking(move || open_file(&p, offset, mode))
        .await
        .map_err(std::io::Error::other)??;
    let file = Arc::new(file);
    lock(&file).await?;
    let f = file.clone();
    let (buf, direct) = tokio::task::spawn_blocking(move || prepare(&f, offset, direct, buf_size))
        .await
        .map_err(std::io::Error::other)??;
    let buf_at = offset - buf.len as u64;
    let skip = buf.len;
    Ok((
        LocalWriter {
            file,
            direct,
            buf,
            buf_at,
            spare: None,
            inflight: None,
            pipe: Pipe::new(),
            len: offset,
            tap: None,
            tap_skip: skip,
            written_back: offset,
            _count: None,
            #[cfg(test)]
            slow: mode == Mode::Slow,
        },
        refused,
    ))
}

/// Opens (never truncating: that waits for the lock) with `O_DIRECT` when
/// asked and taken; `EINVAL` at open means the filesystem refuses it.
fn open_file(path: &Path, offset: u64, mode: Mode) -> std::io::Result<(File, bool, bool)> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).mode(0o600);
    if offset == 0 {
        opts.create(true);
    }
    if mode != Mode::Buffered {
        let mut d = opts.clone();
        d.custom_flags(libc::O_DIRECT);
        #[cfg(test)]
        let opened = match mode {
            Mode::Refused => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            _ => d.open(path),
        };
        #[cfg(not(test))]
        let opened = d.open(path);
        match opened {
            Ok(f) => return Ok((f, true, false)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Ok((opts.open(path)?, false, true));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((opts.open(path)?, false, false))
}

/// Takes the exclusive `flock` of the staging file, waiting (bounded) for
/// a writer dropped with a write still in flight; see the module docs.
async fn lock(file: &File) -> BlobResult<()> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        // SAFETY: plain syscall on a valid open descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e.into());
        }
        if Instant::now() >= deadline {
            return Err(BlobError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "another writer of this staging file did not finish",
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Under the lock: cuts the file to `offset` and, in direct mode at an
/// unaligned offset, reads the partial block before it back into the first
/// buffer. A filesystem that refuses that direct read drops to buffered.
fn prepare(
    file: &File,
    offset: u64,
    direct: bool,
    buf_size: usize,
) -> std::io::Result<(AlignedBuf, bool)> {
    let have = file.metadata()?.len();
    if offset > have {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("staged data is {have} bytes, shorter than its offset {offset}"),
        ));
    }
    if have != offset {
        file.set_len(offset)?;
    }
    let mut buf = AlignedBuf::new(buf_size);
    let part = (offset % ALIGN as u64) as usize;
    if !direct || part == 0 {
        return Ok((buf, direct));
    }
    let block = offset - part as u64;
    let mut got = 0;
    while got < part {
        match file.read_at(&mut buf.whole_mut()[got..ALIGN], block + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                set_direct(file, false)?;
                return Ok((buf, false));
            }
            Err(e) => return Err(e),
        }
    }
    if got < part {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "staged data shrank while it was reopened",
        ));
    }
    buf.len = part;
    Ok((buf, true))
}

/// Sets or clears `O_DIRECT` on an open file.
fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: plain syscalls on a valid open descriptor.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        if libc::fcntl(fd, libc::F_SETFL, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes `data` at `at`; in direct mode, a filesystem that answers
/// `EINVAL` gets the same write buffered, and the file stays buffered.
/// Returns whether the file is still in direct mode.
fn write_at(file: &File, data: &[u8], at: u64, direct: bool) -> (bool, std::io::Result<()>) {
    match file.write_all_at(data, at) {
        Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(error = %e, "the volume refused a direct write; writing through the page cache");
            if let Err(e) = set_direct(file, false) {
                return (true, Err(e));
            }
            (false, file.write_all_at(data, at))
        }
        r => (direct, r),
    }
}

/// Feeds `data` to the tap, if any.
fn feed(tap: &Option<SharedTap>, data: &[u8]) {
    if let Some(t) = tap {
        if !data.is_empty() {
            t.lock().unwrap_or_else(|p| p.into_inner()).update(data);
        }
    }
}

/// Starts (does not wait for) writeback of `range` of a buffered file;
/// advisory, so a failure changes nothing.
fn start_writeback(file: &File, from: u64, to: u64) {
    // SAFETY: plain syscall on a valid open descriptor.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl LocalWriter {
    /// Waits for the write in flight, if any; its buffer becomes the spare.
    async fn settle(&mut self) -> BlobResult<()> {
        if let Some(rx) = self.inflight.take() {
            let (mut buf, direct, res) = rx
                .await
                .map_err(|_| std::io::Error::other("a staged write was lost"))?;
            buf.len = 0;
            self.spare = Some(buf);
            self.direct = direct;
            res?;
        }
        Ok(())
    }

    /// Hands the full buffer to the writer's task on the blocking pool and
    /// carries on with the other one.
    async fn submit(&mut self) -> BlobResult<()> {
        self.settle().await?;
        let cap = self.buf.cap;
        let next = self.spare.take().unwrap_or_else(|| AlignedBuf::new(cap));
        let buf = std::mem::replace(&mut self.buf, next);
        let at = self.buf_at;
        let end = at + buf.len as u64;
        self.buf_at = end;
        let wb = (!self.direct && end - self.written_back >= WRITEBACK_EVERY)
            .then_some(self.written_back);
        if wb.is_some() {
            self.written_back = end;
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        self.pipe.send(Job {
            file: self.file.clone(),
            tap: self.tap.clone(),
            buf,
            at,
            direct: self.direct,
            skip: std::mem::take(&mut self.tap_skip),
            writeback: wb,
            done,
            #[cfg(test)]
            slow: self.slow,
        });
        self.inflight = Some(rx);
        Ok(())
    }

    /// Counts this writer among its store's open ones until it is dropped.
    pub(crate) fn count(&mut self, c: super::WriterCount) {
        self._count = Some(c);
    }

    /// Bytes in each of this writer's buffers (for tests).
    #[cfg(test)]
    pub fn buffer_size(&self) -> usize {
        self.buf.cap
    }

    /// True while the file is written with direct I/O (for tests).
    #[cfg(test)]
    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

#[async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> BlobResult<()> {
        self.len += chunk.len() as u64;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let n = self.buf.fill(rest);
            rest = &rest[n..];
            if self.buf.is_full() {
                self.submit().await?;
            }
        }
        Ok(())
    }

    fn set_tap(&mut self, tap: SharedTap) -> bool {
        if self.buf.len > self.tap_skip || self.inflight.is_some() {
            return false;
        }
        self.tap = Some(tap);
        true
    }

    async fn finish(mut self: Box<Self>) -> BlobResult<u64> {
        self.settle().await?;
        let LocalWriter {
            file,
            direct,
            buf,
            buf_at: at,
            len,
            tap,
            tap_skip,
            ..
        } = *self;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let data = buf.filled();
            feed(&tap, &data[tap_skip..]);
            let aligned = if direct {
                data.len() / ALIGN * ALIGN
            } else {
                0
            };
            let mut direct = direct;
            if aligned > 0 {
                let (d, res) = write_at(&file, &data[..aligned], at, direct);
                res?;
                direct = d;
            }
            if aligned < data.len() {
                if direct {
                    set_direct(&file, false)?;
                }
                file.write_all_at(&data[aligned..], at + aligned as u64)?;
            }
            file.sync_data()
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's pool task ends after [`IDLE`] without a buffer; the
    /// buffers that come after such a pause (and a lost race with the
    /// task's end) are written all the same, in order.
    #[tokio::test]
    async fn buffers_after_an_idle_pause_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let (w, _) = open(&path, 0, Mode::Direct, BUF_MIN).await.unwrap();
        let mut w: Box<dyn BlobWriter> = Box::new(w);
        let data: Vec<u8> = (0..7 * BUF_MIN + 5).map(|i| (i % 253) as u8).collect();
        let mut at = 0;
        for (i, cut) in [BUF_MIN, 3 * BUF_MIN, 3 * BUF_MIN + 1, data.len()]
            .into_iter()
            .enumerate()
        {
            w.write(Bytes::copy_from_slice(&data[at..cut]))
                .await
                .unwrap();
            at = cut;
            // around the task's end, then well past it
            let pause = [IDLE - Duration::from_millis(1), IDLE, 3 * IDLE, IDLE / 2][i];
            tokio::time::sleep(pause).await;
        }
        assert_eq!(w.finish().await.unwrap(), data.len() as u64);
        assert!(std::fs::read(&path).unwrap() == data);
    }

    /// A direct write the filesystem refuses with `EINVAL` (here: a buffer
    /// that is not aligned, which ext4 and xfs refuse) is written through
    /// the page cache instead, and the file stays buffered.
    #[test]
    fn a_refused_direct_write_falls_back_to_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let (file, direct, _) = open_file(&path, 0, Mode::Direct).unwrap();
        let mut buf = AlignedBuf::new(2 * ALIGN);
        let data: Vec<u8> = (0..2 * ALIGN).map(|i| (i % 251) as u8).collect();
        buf.fill(&data);
        // one byte in: misaligned address and length
        let (still, res) = write_at(&file, &buf.filled()[1..ALIGN + 1], 0, direct);
        res.unwrap();
        if direct {
            let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
            assert_eq!(still, flags & libc::O_DIRECT != 0);
        }
        file.sync_data().unwrap();
        assert!(std::fs::read(&path).unwrap() == data[1..ALIGN + 1]);
    }
}
