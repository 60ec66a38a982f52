//! The signals a long-running applet handles, taken synchronously on a thread of their own.
//!
//! TERM and INT stop the process (their name arrives on the stop channel); HUP asks for a
//! reload. They are blocked in every thread, so call [`watch`] before spawning any other.

use crate::error::{Error, Result};
use nix::sys::signal::{SigSet, Signal};

pub struct Signals {
    /// The name of the signal that asks the process to stop.
    pub stop: smol::channel::Receiver<String>,
    /// One item per SIGHUP (coalesced while unread).
    pub reload: smol::channel::Receiver<()>,
}

pub fn watch() -> Result<Signals> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| Error::internal(format!("cannot block signals: {e}")))?;
    let (stop_tx, stop) = smol::channel::bounded::<String>(1);
    let (reload_tx, reload) = smol::channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(Signal::SIGHUP) => {
                    let _ = reload_tx.try_send(());
                }
                Ok(sig) => {
                    let _ = stop_tx.send_blocking(sig.as_str().to_string());
                    return;
                }
                Err(_) => return,
            }
        })
        .map_err(|e| Error::internal(format!("cannot start the signal thread: {e}")))?;
    Ok(Signals { stop, reload })
}
