//! Xen vchan spoken natively: the libxenvchan ring protocol (one page granted by the server
//! domain, two byte rings in it, an event channel, the ring reference and event channel
//! published in xenstore) over the Linux Xen devices, so that a node link needs no
//! `vchan-socket-proxy` at either end and still talks to one at the other.
//!
//! The layout is Xen's `xen/include/public/io/libxenvchan.h`: the server reads the left
//! ring and writes the right one; each end asks the other for an event by setting a bit in
//! the other's notify byte; each end's live byte says it is there (the kernel clears it,
//! and sends the event, when a process that dies leaves its mapping). This transport
//! serves and maps the rings inside the shared page only (1024 and 2048 bytes), as
//! `vchan-socket-proxy` and every libxenvchan server asked for small rings make them.
//!
//! The other domain may write anything in the page at any time: indexes are read once per
//! step and checked against the ring's size, our own counters are kept here (the page's
//! copy is only published), and data is copied out before anything reads it.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

const PAGE: usize = 4096;

// struct vchan_interface, field by field.
const LEFT: usize = 0; // struct ring_shared { uint32_t cons, prod; }
const RIGHT: usize = 8;
const LEFT_ORDER: usize = 16;
const RIGHT_ORDER: usize = 18;
const CLI_LIVE: usize = 20;
const SRV_LIVE: usize = 21;
const CLI_NOTIFY: usize = 22;
const SRV_NOTIFY: usize = 23;

const NOTIFY_WRITE: u8 = 1;
const NOTIFY_READ: u8 = 2;
/// A client's live byte before any client came.
const CLI_NOT_YET: u8 = 2;

/// The rings inside the shared page: 2^10 bytes at 1024, 2^11 bytes at 2048.
const SMALL_ORDER: u16 = 10;
const LARGE_ORDER: u16 = 11;

fn in_page_offset(order: u16) -> Option<usize> {
    match order {
        SMALL_ORDER => Some(1024),
        LARGE_ORDER => Some(2048),
        _ => None,
    }
}

/// What went wrong with a vchan, beyond the system calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VchanError {
    /// The other end's indexes say more is in a ring than it holds.
    CorruptIndexes { ring: &'static str, ahead: u32, size: u32 },
    /// The server's page describes rings this transport does not map.
    UnsupportedRings { read_order: u16, write_order: u16 },
    /// Another client is connected to this ring.
    Busy,
    /// No vchan server has published this path (yet).
    NotPublished(String),
}

impl std::fmt::Display for VchanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VchanError::CorruptIndexes { ring, ahead, size } => write!(
                f,
                "the other domain's {ring} ring indexes are corrupt ({ahead} bytes ahead in a ring of {size})"
            ),
            VchanError::UnsupportedRings {
                read_order,
                write_order,
            } => write!(
                f,
                "the vchan server offers rings of 2^{read_order} and 2^{write_order} bytes; this transport maps only \
                 the rings inside the shared page (2^10 and 2^11)"
            ),
            VchanError::Busy => f.write_str("another client is connected to this vchan"),
            VchanError::NotPublished(p) => write!(f, "no vchan server has published {p} in xenstore"),
        }
    }
}

impl std::error::Error for VchanError {}

impl From<VchanError> for io::Error {
    fn from(e: VchanError) -> io::Error {
        let kind = match e {
            VchanError::NotPublished(_) => io::ErrorKind::NotFound,
            VchanError::Busy => io::ErrorKind::AddrInUse,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// One direction of the page: where its indexes and its bytes are, and its size.
#[derive(Clone, Copy)]
struct Half {
    shr: usize,
    buf: usize,
    size: u32,
}

/// One end's view of a shared vchan page. The page outlives the view (its owner, a
/// [`Mapping`] or a test's buffer, is dropped after it).
struct Ring {
    page: *mut u8,
    server: bool,
    rd: Half,
    wr: Half,
    /// Our own counters: the page holds a copy the other end may overwrite.
    rd_cons: AtomicU32,
    wr_prod: AtomicU32,
}

// SAFETY: the page is memory shared with another domain, touched only through atomics and
// bounded copies; nothing in it is a Rust object whose invariants another thread could break.
unsafe impl Send for Ring {}
// SAFETY: as for Send: every access is an atomic or a copy between disjoint regions.
unsafe impl Sync for Ring {}

impl Ring {
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is one of the 4-aligned header offsets inside the 4096-byte page,
        // which is page-aligned and outlives `self`.
        unsafe { AtomicU32::from_ptr(self.page.add(off).cast()) }
    }

    fn u8_at(&self, off: usize) -> &AtomicU8 {
        // SAFETY: `off` is a header offset inside the page, which outlives `self`.
        unsafe { AtomicU8::from_ptr(self.page.add(off)) }
    }

    fn u16_at(&self, off: usize) -> u16 {
        // The orders are written once by the server before the client maps the page.
        u16::from(self.u8_at(off).load(Ordering::Acquire)) | u16::from(self.u8_at(off + 1).load(Ordering::Acquire)) << 8
    }

    /// The server's side of a fresh page: both rings inside it, nobody connected yet.
    fn serve(page: *mut u8) -> Ring {
        // SAFETY: the caller hands a writable, page-aligned page of PAGE bytes.
        unsafe { std::ptr::write_bytes(page, 0, PAGE) };
        let ring = Ring::view(page, true, SMALL_ORDER, LARGE_ORDER);
        for (off, order) in [(LEFT_ORDER, SMALL_ORDER), (RIGHT_ORDER, LARGE_ORDER)] {
            let [lo, hi] = order.to_le_bytes();
            ring.u8_at(off).store(lo, Ordering::Relaxed);
            ring.u8_at(off + 1).store(hi, Ordering::Relaxed);
        }
        ring.u8_at(CLI_LIVE).store(CLI_NOT_YET, Ordering::Relaxed);
        ring.u8_at(SRV_LIVE).store(1, Ordering::Relaxed);
        ring.u8_at(CLI_NOTIFY).store(NOTIFY_WRITE, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        ring
    }

    /// The client's side of a page the server made: its rings checked, ours declared live.
    fn join(page: *mut u8) -> Result<Ring, VchanError> {
        let probe = Ring::view(page, false, SMALL_ORDER, LARGE_ORDER);
        let (left, right) = (probe.u16_at(LEFT_ORDER), probe.u16_at(RIGHT_ORDER));
        // The client writes the left ring and reads the right one.
        if in_page_offset(left).is_none() || in_page_offset(right).is_none() || left == right {
            return Err(VchanError::UnsupportedRings {
                read_order: right,
                write_order: left,
            });
        }
        if probe.u8_at(CLI_LIVE).load(Ordering::Acquire) == 1 {
            return Err(VchanError::Busy);
        }
        let ring = Ring::view(page, false, left, right);
        ring.u8_at(CLI_LIVE).store(1, Ordering::SeqCst);
        ring.request_notify(NOTIFY_WRITE);
        Ok(ring)
    }

    /// `left` and `right` are the page's orders; they are known to be in-page ones.
    fn view(page: *mut u8, server: bool, left: u16, right: u16) -> Ring {
        let half = |shr, order: u16| Half {
            shr,
            buf: in_page_offset(order).unwrap_or(1024),
            size: 1 << order,
        };
        let (l, r) = (half(LEFT, left), half(RIGHT, right));
        let (rd, wr) = if server { (l, r) } else { (r, l) };
        let ring = Ring {
            page,
            server,
            rd,
            wr,
            rd_cons: AtomicU32::new(0),
            wr_prod: AtomicU32::new(0),
        };
        // A client may join a ring an earlier client left (vchan-socket-proxy keeps one
        // server page for every session): it carries on from the indexes as they are.
        ring.rd_cons
            .store(ring.u32_at(rd.shr).load(Ordering::Acquire), Ordering::Relaxed);
        ring.wr_prod
            .store(ring.u32_at(wr.shr + 4).load(Ordering::Acquire), Ordering::Relaxed);
        ring
    }

    fn peer_live(&self) -> bool {
        let byte = if self.server { CLI_LIVE } else { SRV_LIVE };
        self.u8_at(byte).load(Ordering::Acquire) == 1
    }

    fn set_live(&self, live: bool) {
        let byte = if self.server { SRV_LIVE } else { CLI_LIVE };
        self.u8_at(byte).store(u8::from(live), Ordering::SeqCst);
    }

    /// Ask the other end for an event when it does `bit` (wrote: NOTIFY_WRITE; read:
    /// NOTIFY_READ); the caller checks the ring again afterwards.
    fn request_notify(&self, bit: u8) {
        let byte = if self.server { CLI_NOTIFY } else { SRV_NOTIFY };
        self.u8_at(byte).fetch_or(bit, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Whether the other end asked for an event on `bit` (the request is taken).
    fn take_notify(&self, bit: u8) -> bool {
        fence(Ordering::SeqCst);
        let byte = if self.server { SRV_NOTIFY } else { CLI_NOTIFY };
        self.u8_at(byte).fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }

    /// Bytes waiting to be read.
    fn ready(&self) -> Result<u32, VchanError> {
        let prod = self.u32_at(self.rd.shr + 4).load(Ordering::Acquire);
        let ahead = prod.wrapping_sub(self.rd_cons.load(Ordering::Relaxed));
        if ahead > self.rd.size {
            return Err(VchanError::CorruptIndexes {
                ring: "read",
                ahead,
                size: self.rd.size,
            });
        }
        Ok(ahead)
    }

    /// Room to write.
    fn space(&self) -> Result<u32, VchanError> {
        let cons = self.u32_at(self.wr.shr).load(Ordering::Acquire);
        let ahead = self.wr_prod.load(Ordering::Relaxed).wrapping_sub(cons);
        if ahead > self.wr.size {
            return Err(VchanError::CorruptIndexes {
                ring: "write",
                ahead,
                size: self.wr.size,
            });
        }
        Ok(self.wr.size - ahead)
    }

    /// Read what is there, up to `buf.len()`; `(n, kick)`: kick the other end if it asked.
    fn read(&self, buf: &mut [u8]) -> Result<(usize, bool), VchanError> {
        let n = (self.ready()? as usize).min(buf.len());
        if n == 0 {
            return Ok((0, false));
        }
        let cons = self.rd_cons.load(Ordering::Relaxed);
        let at = (cons & (self.rd.size - 1)) as usize;
        let first = n.min(self.rd.size as usize - at);
        fence(Ordering::Acquire);
        // SAFETY: both ranges lie inside the read ring (at + first <= size, n - first <= at),
        // which lies inside the page; the other end writes only outside [cons, prod).
        unsafe {
            std::ptr::copy_nonoverlapping(self.page.add(self.rd.buf + at), buf.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.page.add(self.rd.buf), buf.as_mut_ptr().add(first), n - first);
        }
        let cons = cons.wrapping_add(n as u32);
        self.rd_cons.store(cons, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.u32_at(self.rd.shr).store(cons, Ordering::Release);
        Ok((n, self.take_notify(NOTIFY_READ)))
    }

    /// Write what fits of `buf`; `(n, kick)` as for [`Ring::read`].
    fn write(&self, buf: &[u8]) -> Result<(usize, bool), VchanError> {
        let n = (self.space()? as usize).min(buf.len());
        if n == 0 {
            return Ok((0, false));
        }
        let prod = self.wr_prod.load(Ordering::Relaxed);
        let at = (prod & (self.wr.size - 1)) as usize;
        let first = n.min(self.wr.size as usize - at);
        fence(Ordering::SeqCst);
        // SAFETY: both ranges lie inside the write ring, which lies inside the page; the
        // other end reads only [cons, prod), which these bytes are not yet part of.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.page.add(self.wr.buf + at), first);
            std::ptr::copy_nonoverlapping(buf.as_ptr().add(first), self.page.add(self.wr.buf), n - first);
        }
        let prod = prod.wrapping_add(n as u32);
        self.wr_prod.store(prod, Ordering::Relaxed);
        fence(Ordering::Release);
        self.u32_at(self.wr.shr + 4).store(prod, Ordering::Release);
        Ok((n, self.take_notify(NOTIFY_WRITE)))
    }
}

// ---------------------------------------------------------------------------------------
// The Linux Xen devices.

const fn ioc_none(ty: u8, nr: u8, size: usize) -> u32 {
    ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

const EVTCHN_BIND_INTERDOMAIN: u32 = ioc_none(b'E', 1, 8);
const EVTCHN_BIND_UNBOUND_PORT: u32 = ioc_none(b'E', 2, 4);
const EVTCHN_NOTIFY: u32 = ioc_none(b'E', 4, 4);
const GNTALLOC_ALLOC_GREF: u32 = ioc_none(b'G', 5, 24);
const GNTALLOC_DEALLOC_GREF: u32 = ioc_none(b'G', 6, 16);
const GNTALLOC_SET_UNMAP_NOTIFY: u32 = ioc_none(b'G', 7, 16);
const GNTDEV_MAP_GRANT_REF: u32 = ioc_none(b'G', 0, 24);
const GNTDEV_UNMAP_GRANT_REF: u32 = ioc_none(b'G', 1, 16);
const GNTDEV_SET_UNMAP_NOTIFY: u32 = ioc_none(b'G', 7, 16);
const GNTALLOC_FLAG_WRITABLE: u16 = 1;
const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 1;
const UNMAP_NOTIFY_SEND_EVENT: u32 = 2;

#[repr(C)]
struct AllocGref {
    domid: u16,
    flags: u16,
    count: u32,
    index: u64,
    gref: u32,
}

#[repr(C)]
struct IndexCount {
    index: u64,
    count: u32,
    pad: u32,
}

#[repr(C)]
struct UnmapNotify {
    index: u64,
    action: u32,
    port: u32,
}

#[repr(C)]
struct MapGrantRef {
    count: u32,
    pad: u32,
    index: u64,
    domid: u32,
    gref: u32,
}

/// A system call's error as its description alone ("No such file or directory").
fn os_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// `ioctl(fd, req, arg)`; the kernel's answer (a port, for the event channel binds).
fn ioctl<T>(fd: RawFd, req: u32, arg: &mut T, what: &str) -> io::Result<u32> {
    // SAFETY: every `req` used here is a Xen device ioctl whose argument is exactly the
    // #[repr(C)] struct `T` passed with it, read and written within its size.
    let rc = unsafe { nix::libc::ioctl(fd, req as _, arg as *mut T) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {}", os_error(&e))));
    }
    Ok(rc as u32)
}

fn open_device(path: &str) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{path}: {}: a Xen domain with the xen-evtchn, xen-gntalloc and xen-gntdev modules is needed",
                    os_error(&e)
                ),
            )
        })
}

/// An event channel of ours, bound to the other domain.
struct Evtchn {
    dev: smol::Async<File>,
    port: u32,
}

impl Evtchn {
    /// A port the other domain may bind to (the server's side).
    fn unbound(remote_domain: u32) -> io::Result<Evtchn> {
        let dev = open_device("/dev/xen/evtchn")?;
        let mut arg = remote_domain;
        let port = ioctl(
            dev.as_raw_fd(),
            EVTCHN_BIND_UNBOUND_PORT,
            &mut arg,
            "an event channel for the domain",
        )?;
        Ok(Evtchn {
            dev: smol::Async::new(dev)?,
            port,
        })
    }

    /// Our end of the server's port (the client's side).
    fn interdomain(remote_domain: u32, remote_port: u32) -> io::Result<Evtchn> {
        let dev = open_device("/dev/xen/evtchn")?;
        let mut arg = [remote_domain, remote_port];
        let port = ioctl(
            dev.as_raw_fd(),
            EVTCHN_BIND_INTERDOMAIN,
            &mut arg,
            "binding the server's event channel",
        )?;
        Ok(Evtchn {
            dev: smol::Async::new(dev)?,
            port,
        })
    }

    fn notify(&self) -> io::Result<()> {
        let mut arg = self.port;
        ioctl(
            self.dev.as_raw_fd(),
            EVTCHN_NOTIFY,
            &mut arg,
            "notifying the other domain",
        )
        .map(drop)
    }

    /// Take the events that came and unmask the port for the next one.
    fn drain(&self) -> io::Result<()> {
        let mut ports = [0u8; 64];
        let mut any = false;
        loop {
            match self.dev.get_ref().read(&mut ports) {
                Ok(0) => break,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if any {
            self.dev.get_ref().write_all(&self.port.to_ne_bytes())?;
        }
        Ok(())
    }
}

/// The shared page mapped into this process: granted by us (server) or the other domain
/// (client). Unmapped on drop; the kernel then clears our live byte and sends the event,
/// as it also does if the process dies.
struct Mapping {
    dev: File,
    page: *mut u8,
    /// The client's mapping, which is released with an ioctl after munmap.
    gntdev_index: Option<u64>,
}

// SAFETY: the mapping is a plain page of memory; see Ring.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

fn mmap_page(dev: &File, index: u64) -> io::Result<*mut u8> {
    use nix::libc;
    // SAFETY: a fresh shared mapping of one page of the device at `index`; nothing aliases
    // it until it is returned.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            dev.as_raw_fd(),
            index as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mapping the vchan page: {}", os_error(&e)),
        ));
    }
    Ok(p.cast())
}

impl Mapping {
    /// A page granted to `domain`, with our live byte cleared and `port` kicked when it goes.
    /// Returns the mapping and its grant reference.
    fn grant(domain: u32, port: u32) -> io::Result<(Mapping, u32)> {
        let dev = open_device("/dev/xen/gntalloc")?;
        let mut alloc = AllocGref {
            domid: u16::try_from(domain).map_err(|_| io::Error::other(format!("{domain} is not a Xen domain id")))?,
            flags: GNTALLOC_FLAG_WRITABLE,
            count: 1,
            index: 0,
            gref: 0,
        };
        ioctl(
            dev.as_raw_fd(),
            GNTALLOC_ALLOC_GREF,
            &mut alloc,
            "granting a page to the domain",
        )?;
        let page = match mmap_page(&dev, alloc.index) {
            Ok(p) => p,
            Err(e) => {
                let mut free = IndexCount {
                    index: alloc.index,
                    count: 1,
                    pad: 0,
                };
                let _ = ioctl(dev.as_raw_fd(), GNTALLOC_DEALLOC_GREF, &mut free, "freeing the grant");
                return Err(e);
            }
        };
        let mapping = Mapping {
            dev,
            page,
            gntdev_index: None,
        };
        let mut notify = UnmapNotify {
            index: alloc.index + SRV_LIVE as u64,
            action: UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT,
            port,
        };
        ioctl(
            mapping.dev.as_raw_fd(),
            GNTALLOC_SET_UNMAP_NOTIFY,
            &mut notify,
            "the vchan's unmap notice",
        )?;
        // Freed now, released when unmapped (here and in the other domain).
        let mut free = IndexCount {
            index: alloc.index,
            count: 1,
            pad: 0,
        };
        ioctl(
            mapping.dev.as_raw_fd(),
            GNTALLOC_DEALLOC_GREF,
            &mut free,
            "releasing the grant",
        )?;
        Ok((mapping, alloc.gref))
    }

    /// Map the page `domain` granted us as `gref`.
    fn map(domain: u32, gref: u32, port: u32) -> io::Result<Mapping> {
        let dev = open_device("/dev/xen/gntdev")?;
        let mut map = MapGrantRef {
            count: 1,
            pad: 0,
            index: 0,
            domid: domain,
            gref,
        };
        ioctl(
            dev.as_raw_fd(),
            GNTDEV_MAP_GRANT_REF,
            &mut map,
            "mapping the server's page",
        )?;
        let page = match mmap_page(&dev, map.index) {
            Ok(p) => p,
            Err(e) => {
                let mut unmap = IndexCount {
                    index: map.index,
                    count: 1,
                    pad: 0,
                };
                let _ = ioctl(
                    dev.as_raw_fd(),
                    GNTDEV_UNMAP_GRANT_REF,
                    &mut unmap,
                    "unmapping the page",
                );
                return Err(e);
            }
        };
        let mapping = Mapping {
            dev,
            page,
            gntdev_index: Some(map.index),
        };
        let mut notify = UnmapNotify {
            index: map.index + CLI_LIVE as u64,
            action: UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT,
            port,
        };
        ioctl(
            mapping.dev.as_raw_fd(),
            GNTDEV_SET_UNMAP_NOTIFY,
            &mut notify,
            "the vchan's unmap notice",
        )?;
        Ok(mapping)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `page` is the one-page mapping made in grant/map; no Ring outlives this.
        unsafe { nix::libc::munmap(self.page.cast(), PAGE) };
        if let Some(index) = self.gntdev_index {
            let mut unmap = IndexCount {
                index,
                count: 1,
                pad: 0,
            };
            let _ = ioctl(
                self.dev.as_raw_fd(),
                GNTDEV_UNMAP_GRANT_REF,
                &mut unmap,
                "unmapping the page",
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// xenstore: the few requests a vchan needs, over xenstored's socket or /dev/xen/xenbus.

const XS_DIRECTORY: u32 = 1;
const XS_READ: u32 = 2;
const XS_TRANSACTION_START: u32 = 6;
const XS_TRANSACTION_END: u32 = 7;
const XS_WRITE: u32 = 11;
const XS_RM: u32 = 13;
const XS_SET_PERMS: u32 = 14;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;
/// XENSTORE_PAYLOAD_MAX.
const XS_PAYLOAD_MAX: usize = 4096;

pub(crate) struct Xenstore {
    io: File,
    next_id: u32,
}

impl Xenstore {
    pub(crate) fn open() -> io::Result<Xenstore> {
        // xenstored's socket where it runs (dom0), else the kernel's xenbus device.
        let io = match std::os::unix::net::UnixStream::connect("/var/run/xenstored/socket") {
            Ok(s) => File::from(std::os::fd::OwnedFd::from(s)),
            Err(_) => open_device("/dev/xen/xenbus").or_else(|e| open_device("/proc/xen/xenbus").map_err(|_| e))?,
        };
        Ok(Xenstore { io, next_id: 1 })
    }

    fn request(&mut self, ty: u32, tx: u32, payload: &[u8]) -> io::Result<Vec<u8>> {
        if payload.len() > XS_PAYLOAD_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "xenstore request too long"));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        for w in [ty, id, tx, payload.len() as u32] {
            msg.extend_from_slice(&w.to_ne_bytes());
        }
        msg.extend_from_slice(payload);
        self.io.write_all(&msg)?;
        loop {
            let mut head = [0u8; 16];
            self.io.read_exact(&mut head)?;
            let word = |i: usize| u32::from_ne_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
            let len = word(12) as usize;
            if len > XS_PAYLOAD_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "xenstore answered an oversized message",
                ));
            }
            let mut body = vec![0u8; len];
            self.io.read_exact(&mut body)?;
            match word(0) {
                XS_WATCH_EVENT => continue,
                XS_ERROR => {
                    let name = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body)).into_owned();
                    let kind = match name.as_str() {
                        "ENOENT" => io::ErrorKind::NotFound,
                        "EACCES" | "EPERM" => io::ErrorKind::PermissionDenied,
                        "EAGAIN" => io::ErrorKind::WouldBlock,
                        _ => io::ErrorKind::Other,
                    };
                    return Err(io::Error::new(kind, format!("xenstore: {name}")));
                }
                t if t == ty && word(4) == id => return Ok(body),
                t => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("xenstore answered message type {t} to a request of type {ty}"),
                    ))
                }
            }
        }
    }

    fn path(path: &str, rest: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(path.len() + 1 + rest.len());
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        p.extend_from_slice(rest);
        p
    }

    /// A node's value; `None` if it does not exist.
    pub(crate) fn read(&mut self, path: &str) -> io::Result<Option<String>> {
        match self.request(XS_READ, 0, &Self::path(path, b"")) {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(e.kind(), format!("reading {path}: {e}"))),
        }
    }

    fn directory(&mut self, path: &str) -> io::Result<Vec<String>> {
        let v = self.request(XS_DIRECTORY, 0, &Self::path(path, b""))?;
        Ok(v.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    fn rm(&mut self, path: &str) -> io::Result<()> {
        match self.request(XS_RM, 0, &Self::path(path, b"")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Write `entries` under `base`, each readable by `owner` and `reader` only, in one
    /// transaction (a client never sees a ring reference without its event channel).
    fn publish(&mut self, base: &str, entries: &[(&str, String)], owner: u32, reader: u32) -> io::Result<()> {
        let perms = format!("n{owner}\0r{reader}\0");
        loop {
            let tx = self.request(XS_TRANSACTION_START, 0, b"\0")?;
            let tx: u32 = String::from_utf8_lossy(tx.strip_suffix(b"\0").unwrap_or(&tx))
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "xenstore gave no transaction id"))?;
            for (name, value) in entries {
                let p = format!("{base}/{name}");
                self.request(XS_WRITE, tx, &Self::path(&p, value.as_bytes()))?;
                self.request(XS_SET_PERMS, tx, &Self::path(&p, perms.as_bytes()))?;
            }
            match self.request(XS_TRANSACTION_END, tx, b"T\0") {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("publishing {base}: {e}"))),
            }
        }
    }

    /// The id of the domain named `name`, if one is.
    fn domain_named(&mut self, name: &str) -> io::Result<Option<u32>> {
        for id in self.directory("/local/domain")? {
            if self.read(&format!("/local/domain/{id}/name"))?.as_deref() == Some(name) {
                return Ok(id.parse().ok());
            }
        }
        Ok(None)
    }

    fn own_domid(&mut self) -> io::Result<u32> {
        self.read("domid")?
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| io::Error::other("xenstore does not say this domain's id"))
    }
}

// ---------------------------------------------------------------------------------------
// The stream.

/// The domain at the other end of a listener: fixed, or looked up by name whenever a vchan
/// is made (a domain created again gets a new id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XenDomain {
    Id(u32),
    Name(String),
}

impl std::fmt::Display for XenDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XenDomain::Id(id) => write!(f, "{id}"),
            XenDomain::Name(n) => f.write_str(n),
        }
    }
}

impl XenDomain {
    pub fn parse(s: &str) -> Result<XenDomain, String> {
        if let Ok(id) = s.parse::<u16>() {
            return Ok(XenDomain::Id(id.into()));
        }
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if ok {
            Ok(XenDomain::Name(s.into()))
        } else {
            Err(format!("\"{s}\" is neither a Xen domain id nor a domain name"))
        }
    }

    fn resolve(&self, xs: &mut Xenstore) -> io::Result<Option<u32>> {
        match self {
            XenDomain::Id(id) => Ok(Some(*id)),
            XenDomain::Name(n) => xs.domain_named(n),
        }
    }
}

/// Wakes whoever waits on either direction: both wait on the same event channel.
#[derive(Default)]
struct Fanout {
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl Wake for Fanout {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let wakers: Vec<Waker> = crate::sys::lock(&self.wakers)
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        wakers.into_iter().for_each(Waker::wake);
    }
}

const READER: usize = 0;
const WRITER: usize = 1;

/// One vchan session, as a byte stream.
pub struct VchanStream {
    // Dropped in this order: the ring view, then the page, then the event channel.
    ring: Ring,
    _map: Mapping,
    evt: Evtchn,
    fanout: Arc<Fanout>,
    waker: Waker,
    /// The server's xenstore entries, removed when the session ends.
    published: Option<String>,
    /// The listener's one session at a time, given back when this one ends.
    slot: Option<smol::lock::SemaphoreGuardArc>,
    /// The server's look, while it waits to read, whether the client's domain still exists.
    watch: Option<DomainWatch>,
}

/// A domain destroyed never clears its live byte (its kernel is gone, not its process):
/// the server looks in xenstore every [`RESOLVE_EVERY`] that it is still there.
struct DomainWatch {
    domain: XenDomain,
    domid: u32,
    timer: smol::Timer,
    looking: Option<blocking::Task<io::Result<bool>>>,
}

impl DomainWatch {
    /// `Ready(())` once the domain is found gone; `Pending` while it is there.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(task) = &mut self.looking {
                match std::pin::Pin::new(task).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(false)) => return Poll::Ready(()),
                    // (xenstore unreadable for a moment says nothing about the domain)
                    Poll::Ready(_) => {
                        self.looking = None;
                        self.timer.set_after(RESOLVE_EVERY);
                    }
                }
            }
            match std::pin::Pin::new(&mut self.timer).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => {
                    let (domain, domid) = (self.domain.clone(), self.domid);
                    self.looking = Some(blocking::unblock(move || {
                        let name = Xenstore::open()?.read(&format!("/local/domain/{domid}/name"))?;
                        Ok(match (&domain, name) {
                            (_, None) => false,
                            (XenDomain::Name(n), Some(now)) => *n == now,
                            (XenDomain::Id(_), Some(_)) => true,
                        })
                    }));
                }
            }
        }
    }
}

impl VchanStream {
    fn new(ring: Ring, map: Mapping, evt: Evtchn, published: Option<String>) -> VchanStream {
        let fanout = Arc::new(Fanout::default());
        VchanStream {
            ring,
            _map: map,
            evt,
            waker: Waker::from(fanout.clone()),
            fanout,
            published,
            slot: None,
            watch: None,
        }
    }

    /// Wait for the event channel on behalf of `who`. `Ready` means something came (or may
    /// have): look at the ring again.
    fn poll_event(&self, cx: &mut Context<'_>, who: usize) -> Poll<io::Result<()>> {
        crate::sys::lock(&self.fanout.wakers)[who] = Some(cx.waker().clone());
        match self.evt.dev.poll_readable(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(Ok(())) => Poll::Ready(self.evt.drain()),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn kick(&self, kick: bool) -> io::Result<()> {
        if kick {
            self.evt.notify()?;
        }
        Ok(())
    }
}

impl smol::io::AsyncRead for VchanStream {
    fn poll_read(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let (n, kick) = this.ring.read(buf)?;
            if n > 0 {
                this.kick(kick)?;
                return Poll::Ready(Ok(n));
            }
            if !this.ring.peer_live() {
                return Poll::Ready(Ok(0));
            }
            this.ring.request_notify(NOTIFY_WRITE);
            if this.ring.ready()? > 0 {
                continue;
            }
            match this.poll_event(cx, READER) {
                Poll::Ready(r) => r?,
                // Checked once more with the waker in place: the writer may have taken the
                // event this one was waiting for.
                Poll::Pending if this.ring.ready()? > 0 || !this.ring.peer_live() => continue,
                Poll::Pending => {
                    if let Some(watch) = &mut this.watch {
                        if watch.poll_gone(cx).is_ready() {
                            let gone = format!("Xen domain {} ({}) is gone", watch.domid, watch.domain);
                            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, gone)));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl smol::io::AsyncWrite for VchanStream {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if !this.ring.peer_live() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the other end of the vchan is gone",
                )));
            }
            let (n, kick) = this.ring.write(buf)?;
            if n > 0 {
                this.kick(kick)?;
                return Poll::Ready(Ok(n));
            }
            this.ring.request_notify(NOTIFY_READ);
            if this.ring.space()? > 0 {
                continue;
            }
            match this.poll_event(cx, WRITER) {
                Poll::Ready(r) => r?,
                Poll::Pending if this.ring.space()? > 0 || !this.ring.peer_live() => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A write is in the other domain's sight as soon as it returns.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing half-closes a vchan: libxenvchan drops what is unread when its peer
        // leaves, so the session ends when the stream is dropped, after its last bytes.
        Poll::Ready(Ok(()))
    }
}

impl Drop for VchanStream {
    fn drop(&mut self) {
        // No new client may find a page that is going away.
        if let Some(base) = self.published.take() {
            if let Err(e) = Xenstore::open().and_then(|mut xs| xs.rm(&base)) {
                crate::log_warn!("vchan {base}: removing its xenstore entries: {e}");
            }
        }
        self.ring.set_live(false);
        let _ = self.evt.notify();
    }
}

/// Dial the vchan that domain `server` serves at `path` (relative paths are under that
/// domain's home, `/local/domain/ID/`). Blocking: run it off the executor.
pub fn connect(server: u32, path: &str) -> io::Result<VchanStream> {
    let base = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/local/domain/{server}/{path}")
    };
    let mut xs = Xenstore::open()?;
    let number = |name: &str, xs: &mut Xenstore| -> io::Result<u32> {
        let p = format!("{base}/{name}");
        match xs.read(&p)? {
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{p} is \"{v}\", not a number"))),
            None => Err(VchanError::NotPublished(base.clone()).into()),
        }
    };
    let gref = number("ring-ref", &mut xs)?;
    let port = number("event-channel", &mut xs)?;
    drop(xs);
    let evt = Evtchn::interdomain(server, port)?;
    let map = Mapping::map(server, gref, evt.port)?;
    let ring = Ring::join(map.page)?;
    // The server asked for an event on our first write; this one says we are here.
    evt.notify()?;
    Ok(VchanStream::new(ring, map, evt, None))
}

/// A vchan server for one domain: one session at a time, each on a fresh page.
pub struct VchanListener {
    domain: XenDomain,
    path: String,
    slot: Arc<smol::lock::Semaphore>,
}

/// How often a listener waiting for its client looks whether its domain was created again.
const RESOLVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl VchanListener {
    /// Checks that this is a Xen domain that can serve a vchan; serves nothing yet.
    pub fn bind(domain: XenDomain, path: String) -> io::Result<VchanListener> {
        for dev in ["/dev/xen/evtchn", "/dev/xen/gntalloc"] {
            open_device(dev)?;
        }
        Xenstore::open()?;
        Ok(VchanListener {
            domain,
            path,
            slot: Arc::new(smol::lock::Semaphore::new(1)),
        })
    }

    async fn resolve(&self) -> io::Result<Option<u32>> {
        let domain = self.domain.clone();
        blocking::unblock(move || domain.resolve(&mut Xenstore::open()?)).await
    }

    /// The next session, once the last one ended and the domain's client came: the stream
    /// and the client's domain id.
    pub async fn accept(&self) -> io::Result<(VchanStream, u32)> {
        let r = self.next().await;
        if r.is_err() {
            // What failed (the devices, xenstore) rarely mends in a moment: not a busy loop.
            smol::Timer::after(RESOLVE_EVERY).await;
        }
        r
    }

    async fn next(&self) -> io::Result<(VchanStream, u32)> {
        let slot = self.slot.acquire_arc().await;
        let mut missing_since_logged = false;
        loop {
            let Some(domid) = self.resolve().await? else {
                if !missing_since_logged {
                    crate::log_info!("vchan {}: no domain {} yet; waiting for it", self.path, self.domain);
                    missing_since_logged = true;
                }
                smol::Timer::after(RESOLVE_EVERY).await;
                continue;
            };
            missing_since_logged = false;
            let path = self.path.clone();
            let mut stream = blocking::unblock(move || serve(domid, &path)).await?;
            loop {
                if stream.ring.peer_live() {
                    stream.slot = Some(slot);
                    stream.watch = Some(DomainWatch {
                        domain: self.domain.clone(),
                        domid,
                        timer: smol::Timer::after(RESOLVE_EVERY),
                        looking: None,
                    });
                    return Ok((stream, domid));
                }
                let came = smol::future::or(
                    async {
                        stream.evt.dev.readable().await?;
                        stream.evt.drain().map(|_| true)
                    },
                    async {
                        smol::Timer::after(RESOLVE_EVERY).await;
                        Ok(false)
                    },
                )
                .await?;
                if !came && self.resolve().await? != Some(domid) {
                    crate::log_info!(
                        "vchan {}: domain {} is no longer {domid}; serving it afresh",
                        self.path,
                        self.domain
                    );
                    break;
                }
            }
        }
    }
}

/// A fresh page for `domain`, published at `path`. Blocking.
fn serve(domain: u32, path: &str) -> io::Result<VchanStream> {
    let evt = Evtchn::unbound(domain)?;
    let (map, gref) = Mapping::grant(domain, evt.port)?;
    let ring = Ring::serve(map.page);
    let mut xs = Xenstore::open()?;
    let own = xs.own_domid()?;
    xs.publish(
        path,
        &[("ring-ref", gref.to_string()), ("event-channel", evt.port.to_string())],
        own,
        domain,
    )?;
    Ok(VchanStream::new(ring, map, evt, Some(path.to_string())))
}

/// For the fuzz target `vchan_ring`: this end of a vchan over a page between guard pages,
/// the other domain played by `script` (it rewrites the page's indexes, orders, flags and
/// bytes at will between our reads and writes). Panics if a read or write returns more than
/// asked, or if anything outside the page changed.
#[doc(hidden)]
pub fn against_a_hostile_peer(script: &[u8]) {
    let layout = std::alloc::Layout::from_size_align(3 * PAGE, PAGE).expect("a valid layout");
    // SAFETY: a non-zero size.
    let base = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!base.is_null(), "out of memory");
    // SAFETY: the allocation is 3 pages; the guards are its first and last.
    unsafe {
        std::ptr::write_bytes(base, 0xA5, PAGE);
        std::ptr::write_bytes(base.add(2 * PAGE), 0xA5, PAGE);
    }
    // SAFETY: the middle page of the allocation.
    let page = unsafe { base.add(PAGE) };
    let poke = |off: usize, bytes: &[u8]| {
        let off = off % PAGE;
        let n = bytes.len().min(PAGE - off);
        // SAFETY: [off, off + n) lies inside the page.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), page.add(off), n) };
    };
    let guards_intact = || {
        // SAFETY: both guard pages lie inside the allocation.
        let (before, after) = unsafe {
            (
                std::slice::from_raw_parts(base, PAGE),
                std::slice::from_raw_parts(base.add(2 * PAGE), PAGE),
            )
        };
        before.iter().chain(after).all(|b| *b == 0xA5)
    };
    if let Some((&first, mut rest)) = script.split_first() {
        let ours = if first & 1 == 0 {
            Some(Ring::serve(page))
        } else {
            // The other domain is the server: it made the page's header.
            poke(0, &rest[..rest.len().min(GRANTS_AT)]);
            rest = &rest[rest.len().min(GRANTS_AT)..];
            Ring::join(page).ok()
        };
        if let Some(ours) = ours {
            let mut buf = vec![0u8; PAGE + 1];
            while let [op, a, b, tail @ ..] = rest {
                let n = usize::from(u16::from_le_bytes([*a, *b])) % (PAGE + 1);
                rest = tail;
                match op % 4 {
                    0 | 3 => {
                        let take = rest.len().min(1 + usize::from(*op >> 2) % 16);
                        poke(n, &rest[..take]);
                        rest = &rest[take..];
                    }
                    1 => {
                        if let Ok((got, _)) = ours.read(&mut buf[..n]) {
                            assert!(got <= n, "read {got} bytes into {n}");
                        }
                    }
                    _ => {
                        if let Ok((put, _)) = ours.write(&buf[..n]) {
                            assert!(put <= n, "wrote {put} bytes of {n}");
                        }
                    }
                }
                let _ = (ours.peer_live(), ours.ready(), ours.space());
                assert!(guards_intact(), "a write outside the vchan page");
            }
        }
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(base, layout) };
}

/// Where the grant references begin: the header a server writes before the client maps it.
const GRANTS_AT: usize = 24;

#[cfg(test)]
mod tests {
    use super::*;

    /// A page-aligned page of our own, standing in for the granted one.
    struct Page(*mut u8);
    impl Page {
        fn new() -> Page {
            let layout = std::alloc::Layout::from_size_align(PAGE, PAGE).unwrap();
            // SAFETY: a non-zero size.
            Page(unsafe { std::alloc::alloc_zeroed(layout) })
        }
        fn poke_u32(&self, off: usize, v: u32) {
            // SAFETY: inside the page, 4-aligned.
            unsafe { AtomicU32::from_ptr(self.0.add(off).cast()).store(v, Ordering::SeqCst) }
        }
    }
    impl Drop for Page {
        fn drop(&mut self) {
            // SAFETY: allocated in new with this layout.
            unsafe { std::alloc::dealloc(self.0, std::alloc::Layout::from_size_align(PAGE, PAGE).unwrap()) }
        }
    }

    #[test]
    fn bytes_cross_both_rings_and_wrap_around_them() {
        let page = Page::new();
        let server = Ring::serve(page.0);
        assert!(!server.peer_live(), "no client yet");
        let client = Ring::join(page.0).unwrap();
        assert!(server.peer_live() && client.peer_live());
        // More than either ring holds, in pieces that straddle their ends.
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (from, to, size) in [(&client, &server, 1024), (&server, &client, 2048)] {
            let mut got = Vec::new();
            let mut sent = 0;
            while got.len() < data.len() {
                let (n, _) = from.write(&data[sent..(sent + 700).min(data.len())]).unwrap();
                assert!(from.space().unwrap() as usize <= size);
                sent += n;
                let mut buf = [0u8; 333];
                loop {
                    let (m, _) = to.read(&mut buf).unwrap();
                    if m == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..m]);
                }
            }
            assert_eq!(got, data);
        }
    }

    #[test]
    fn a_full_ring_takes_nothing_more_until_read() {
        let page = Page::new();
        let server = Ring::serve(page.0);
        let client = Ring::join(page.0).unwrap();
        assert_eq!(client.write(&[1; 5000]).unwrap().0, 1024);
        assert_eq!(client.write(&[1; 10]).unwrap().0, 0);
        assert_eq!(server.read(&mut [0; 24]).unwrap().0, 24);
        assert_eq!(client.write(&[1; 100]).unwrap().0, 24);
    }

    #[test]
    fn an_end_is_kicked_only_when_it_asked() {
        let page = Page::new();
        let server = Ring::serve(page.0);
        let client = Ring::join(page.0).unwrap();
        // The server asks for writes from the start (as libxenvchan's server does).
        assert!(client.write(b"a").unwrap().1, "first write kicks");
        assert!(!client.write(b"b").unwrap().1, "the request was taken");
        server.request_notify(NOTIFY_WRITE);
        assert!(client.write(b"c").unwrap().1);
        // The client asked for writes when it joined; reads kick nobody unless asked.
        assert!(server.write(b"x").unwrap().1);
        assert!(!server.read(&mut [0; 3]).unwrap().1);
        server.request_notify(NOTIFY_READ);
        assert!(client.read(&mut [0; 1]).unwrap().1);
    }

    #[test]
    fn corrupt_indexes_from_the_other_domain_are_an_error_not_a_read_out_of_the_ring() {
        let page = Page::new();
        let server = Ring::serve(page.0);
        let client = Ring::join(page.0).unwrap();
        // The client claims to have written 5000 bytes into a ring of 1024.
        page.poke_u32(LEFT + 4, 5000);
        assert_eq!(
            server.read(&mut [0; 16]).unwrap_err(),
            VchanError::CorruptIndexes {
                ring: "read",
                ahead: 5000,
                size: 1024
            }
        );
        // The server claims to have consumed what the client never wrote.
        page.poke_u32(LEFT, 77);
        assert!(matches!(
            client.write(b"x"),
            Err(VchanError::CorruptIndexes { ring: "write", .. })
        ));
        // Rewriting the copy of our own counter in the page changes nothing of ours.
        let page2 = Page::new();
        let server = Ring::serve(page2.0);
        let client = Ring::join(page2.0).unwrap();
        client.write(b"hello").unwrap();
        page2.poke_u32(LEFT, 3); // the server's consumer index, as the client might forge it
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).unwrap().0, 5);
        assert_eq!(&buf[..5], b"hello");
    }

    #[test]
    fn a_client_refuses_rings_outside_the_page_and_a_ring_in_use() {
        let page = Page::new();
        let _server = Ring::serve(page.0);
        let _client = Ring::join(page.0).unwrap();
        assert_eq!(Ring::join(page.0).err(), Some(VchanError::Busy));
        let page = Page::new();
        let _server = Ring::serve(page.0);
        // SAFETY: inside the page.
        unsafe { *page.0.add(LEFT_ORDER) = 14 };
        assert!(matches!(
            Ring::join(page.0),
            Err(VchanError::UnsupportedRings { write_order: 14, .. })
        ));
    }

    #[test]
    fn a_client_that_joins_a_ring_an_earlier_one_left_carries_on_from_its_indexes() {
        let page = Page::new();
        let server = Ring::serve(page.0);
        let first = Ring::join(page.0).unwrap();
        first.write(&[9; 900]).unwrap();
        server.read(&mut [0; 900]).unwrap();
        first.set_live(false);
        assert!(!server.peer_live());
        let second = Ring::join(page.0).unwrap();
        assert_eq!(second.write(b"again").unwrap().0, 5);
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).unwrap().0, 5);
        assert_eq!(&buf[..5], b"again");
    }

    #[test]
    fn a_hostile_other_domain_rewriting_the_page_gets_no_write_outside_it() {
        // What the fuzz target vchan_ring does, over a few thousand pseudo-random scripts.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..3000 {
            let len = 1 + round % 400;
            let script: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            against_a_hostile_peer(&script);
        }
        // The peer claims a full ring on both sides and pushes its indexes far ahead.
        against_a_hostile_peer(&[0, 0, 4, 0, 0xff, 0xff, 0xff, 0x7f, 1, 0, 4, 2, 0, 4]);
    }

    #[test]
    fn domains_are_ids_or_names() {
        assert_eq!(XenDomain::parse("3"), Ok(XenDomain::Id(3)));
        assert_eq!(XenDomain::parse("sec-1"), Ok(XenDomain::Name("sec-1".into())));
        for bad in ["", "70000", "a b", "1x", "x/y"] {
            assert!(XenDomain::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // include/uapi/xen/{evtchn,gntalloc,gntdev}.h, _IOC(_IOC_NONE, type, nr, size).
        assert_eq!(EVTCHN_BIND_INTERDOMAIN, 0x0008_4501);
        assert_eq!(EVTCHN_BIND_UNBOUND_PORT, 0x0004_4502);
        assert_eq!(EVTCHN_NOTIFY, 0x0004_4504);
        assert_eq!(GNTALLOC_ALLOC_GREF, 0x0018_4705);
        assert_eq!(GNTDEV_MAP_GRANT_REF, 0x0018_4700);
        assert_eq!(std::mem::size_of::<AllocGref>(), 24);
        assert_eq!(std::mem::size_of::<MapGrantRef>(), 24);
        assert_eq!(std::mem::size_of::<UnmapNotify>(), 16);
        assert_eq!(std::mem::size_of::<IndexCount>(), 16);
    }
}
