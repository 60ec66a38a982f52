//! Byte streams that carry frames: reading and writing whole frames, and Unix listeners.
//!
//! Frames are read header first; the body is allocated only after [`Header::decode`]
//! has accepted its length. Vsock, TCP and stdio links use the same frame functions.

use crate::wire::{FrameError, Header, HEADER_LEN};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

fn io_err(e: io::Error) -> FrameError {
    FrameError::Io(e.to_string())
}

/// Read one frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limit: u32) -> Result<Option<(Header, Vec<u8>)>, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]).await.map_err(io_err)? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let header = Header::decode(&head, limit)?;
    let mut body = vec![0u8; header.body_len as usize];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => io_err(e),
    })?;
    Ok(Some((header, body)))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).await.map_err(io_err)?;
    w.flush().await.map_err(io_err)
}

/// The blocking twin of [`read_frame`], for the command-line client.
pub fn read_frame_blocking<R: Read>(r: &mut R, limit: u32) -> Result<Option<(Header, Vec<u8>)>, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let header = Header::decode(&head, limit)?;
    let mut body = vec![0u8; header.body_len as usize];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => io_err(e),
    })?;
    Ok(Some((header, body)))
}

/// Bind a Unix socket at `path` with `mode` (and group `gid`) already set when it appears.
///
/// The socket is bound under a temporary name, given its mode and group, then renamed
/// into place, so no client ever sees it with the wrong permissions. An existing socket
/// is replaced only if nothing answers on it (a stale one); a live one or a path that is
/// not a socket is an error.
pub fn bind_unix(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process (another iamd?)", path.display()),
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; refusing to replace it", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// The uid, gid and pid of the process at the other end of a Unix connection (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_credentials(stream: &impl std::os::fd::AsFd) -> io::Result<PeerCredentials> {
    let c =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok(PeerCredentials {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_frame, FrameKind, Request, DEFAULT_BODY_LIMIT};

    #[test]
    fn reads_back_what_was_written() {
        let frame = encode_frame(FrameKind::Request, 3, &Request::Version, DEFAULT_BODY_LIMIT).unwrap();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let mut r = &two[..];
        let (h, body) = read_frame_blocking(&mut r, DEFAULT_BODY_LIMIT).unwrap().unwrap();
        assert_eq!(h.id, 3);
        assert_eq!(crate::wire::decode_body::<Request>(&body).unwrap(), Request::Version);
        assert!(read_frame_blocking(&mut r, DEFAULT_BODY_LIMIT).unwrap().is_some());
        assert!(read_frame_blocking(&mut r, DEFAULT_BODY_LIMIT).unwrap().is_none());
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let frame = encode_frame(FrameKind::Request, 3, &Request::Version, DEFAULT_BODY_LIMIT).unwrap();
        for cut in [5, HEADER_LEN] {
            let mut r = &frame[..cut];
            assert_eq!(
                read_frame_blocking(&mut r, DEFAULT_BODY_LIMIT),
                Err(FrameError::Truncated)
            );
        }
        let mut r = &frame[..];
        let got = smol::block_on(read_frame(&mut r, DEFAULT_BODY_LIMIT)).unwrap().unwrap();
        assert_eq!(got.0.id, 3);
    }

    #[test]
    fn bind_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
        let dir = std::env::temp_dir().join(format!("aos-iam-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let live = bind_unix(&path, 0o600, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            bind_unix(&path, 0o600, None).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(live);
        let again = bind_unix(&path, 0o666, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o666);
        drop(again);
        let file = dir.join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        assert_eq!(
            bind_unix(&file, 0o600, None).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
