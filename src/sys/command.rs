//! External commands (platform hooks, signing commands) run with bounded time and output.
//!
//! Input is written and output read on their own threads so that a command that fills a
//! pipe cannot deadlock us; a command still running at its deadline is killed.

use crate::error::{Error, ErrorKind, Result};
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Stderr kept from a command, for its error message.
pub const STDERR_LIMIT: usize = 4096;

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// The end of what the command wrote on stderr, trimmed.
    pub stderr: String,
}

/// Run `cmd` with `input` on stdin, reading at most `stdout_limit` bytes of its output;
/// `what` names it in errors. Exceeding the output limit is an error, so is the deadline.
pub fn run(
    mut cmd: Command,
    what: &str,
    input: Option<&[u8]>,
    stdout_limit: usize,
    timeout: Duration,
) -> Result<Finished> {
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::unavailable(format!("{what}: cannot run: {e}")))?;
    let writer = match (child.stdin.take(), input) {
        (Some(mut stdin), Some(data)) => {
            // It may be a secret (a hook's password): zeroed once written.
            let data = zeroize::Zeroizing::new(data.to_vec());
            Some(std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            }))
        }
        _ => None,
    };
    let mut stdout = child.stdout.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = (&mut stdout).take(stdout_limit as u64 + 1).read_to_end(&mut out);
        // Keep draining so the command is never blocked on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        r.map(|_| out)
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if all.len() > 2 * STDERR_LIMIT {
                all.drain(..all.len() - STDERR_LIMIT);
            }
        }
        all
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{what} ran longer than {} s and was stopped", timeout.as_secs()),
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(Error::internal(format!("{what}: waiting for it: {e}"))),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_reader
        .join()
        .map_err(|_| Error::internal(format!("{what}: output reader failed")))?
        .map_err(|e| Error::internal(format!("{what}: reading its output: {e}")))?;
    if stdout.len() > stdout_limit {
        return Err(Error::invalid(format!("{what} printed more than {stdout_limit} bytes")));
    }
    let err = err_reader.join().unwrap_or_default();
    let tail = &err[err.len().saturating_sub(STDERR_LIMIT)..];
    Ok(Finished {
        status,
        stdout,
        stderr: String::from_utf8_lossy(tail).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn output_and_status_come_back() {
        let f = run(
            sh("cat; echo oops >&2; exit 3"),
            "test",
            Some(b"in"),
            100,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            (f.status.code(), f.stdout.as_slice(), f.stderr.as_str()),
            (Some(3), &b"in"[..], "oops")
        );
    }

    #[test]
    fn a_command_past_its_deadline_is_stopped() {
        let t = Instant::now();
        let e = run(sh("sleep 30"), "sleeper", None, 100, Duration::from_millis(200))
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn too_much_output_is_an_error_and_never_blocks() {
        let e = run(
            sh("head -c 1000000 /dev/zero"),
            "chatty",
            None,
            1000,
            Duration::from_secs(10),
        )
        .err()
        .unwrap();
        assert!(e.message.contains("more than 1000 bytes"), "{e}");
        let f = run(
            sh("head -c 100000 /dev/zero >&2; echo done"),
            "noisy",
            None,
            100,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(f.stdout, b"done\n");
        assert!(f.stderr.len() <= STDERR_LIMIT);
    }
}
