//! iamd's background tasks: periodic reconciliation, renewals when due, and the identity
//! files watched on SIGHUP and every poll interval.

use super::*;

/// Reconcile the database with the stores every `reconcile.interval` (the start-up pass
/// ran before the sockets opened).
pub(super) async fn reconcile_periodically(shared: Arc<Shared>) {
    let interval = shared.prov.config.reconcile.interval;
    if interval.is_zero() {
        return;
    }
    loop {
        smol::Timer::after(interval).await;
        let s = shared.clone();
        match blocking::unblock(move || s.prov.reconcile()).await {
            Ok(report) => {
                crate::log_debug!("reconciliation: pass done, {} findings", report.len());
                if !report.is_empty() {
                    shared.publish_cert_changes();
                }
            }
            Err(e) => crate::log_error!("reconciliation: {e}"),
        }
    }
}

/// Longest sleep of the renewal scheduler (a certificate applied meanwhile wakes it at once).
pub(super) const RENEW_POLL_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Renew the certificates of modules with a `[modules.renew]` policy when they are due, and
/// resume renewals a restart interrupted. Not while the node's id is not the one it was
/// provisioned under (until Deprovision clears that).
pub(super) async fn renew_when_due(shared: Arc<Shared>) {
    if shared.prov.config.modules.iter().all(|m| m.renew.is_none()) {
        return;
    }
    loop {
        let s = shared.clone();
        let pass = async move {
            match s.prov.id_changed() {
                Some(_) => Ok((false, crate::sys::now() + RENEW_POLL_MAX.as_secs() as i64)),
                None => blocking::unblock(move || crate::daemon::renewal::run_due(&s.prov)).await,
            }
        };
        let wait = match pass.await {
            Ok((applied, next)) => {
                if applied {
                    shared.publish_cert_changes();
                }
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let wait = (next - now).clamp(1, RENEW_POLL_MAX.as_secs() as i64) as u64;
                crate::log_debug!("renewal: next pass in {wait} s");
                std::time::Duration::from_secs(wait)
            }
            Err(e) => {
                crate::log_error!("renewal: {e}");
                RENEW_POLL_MAX
            }
        };
        let changed = shared.certs_changed.1.clone();
        smol::future::or(
            async {
                smol::Timer::after(wait).await;
            },
            async {
                let _ = changed.recv().await;
            },
        )
        .await;
    }
}

/// Look at the current certificates for alerts (`[alerts]`): every `interval`, and at once
/// when they change. Not while the node's id is not the one it was provisioned under: its
/// certificates name another node (that is alerted once, at start).
pub(super) async fn alert_when_due(shared: Arc<Shared>) {
    loop {
        if shared.prov.id_changed().is_none() {
            let s = shared.clone();
            match blocking::unblock(move || s.prov.modules.list(&s.prov.db)).await {
                Ok(certs) => shared.prov.alerts.look_at(&certs, crate::sys::now()),
                Err(e) => crate::log_warn!("alerts: cannot list the certificates: {e}"),
            }
        }
        let wake = shared.alerts_wake.1.clone();
        smol::future::or(
            async {
                smol::Timer::after(shared.prov.config.alerts.interval).await;
            },
            async {
                let _ = wake.recv().await;
            },
        )
        .await;
    }
}

/// Longest sleep of the enrollment task (ReleaseQuarantine wakes it at once).
pub(super) const ENROLL_POLL_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Take a bootstrapped node through its enrollment (see [`crate::daemon::enroll`]),
/// reporting each transition to node subscribers and each certificate applied.
pub(super) async fn enroll_when_due(shared: Arc<Shared>) {
    if shared.prov.config.enroll.is_none() || shared.provisioning_mode || shared.prov.id_changed().is_some() {
        return;
    }
    loop {
        let s = shared.clone();
        let wait = match blocking::unblock(move || crate::daemon::enroll::run_due(&s.prov)).await {
            Ok(pass) => {
                if pass.applied {
                    shared.publish_cert_changes();
                }
                if pass.transitions {
                    match shared.prov.node_info("") {
                        Ok(info) => shared.nodes.events.send(info),
                        Err(e) => crate::log_warn!("node info for subscribers: {e}"),
                    }
                }
                let now = crate::sys::now();
                std::time::Duration::from_secs((pass.next - now).clamp(0, ENROLL_POLL_MAX.as_secs() as i64) as u64)
            }
            Err(e) => {
                crate::log_error!("enrollment: {e}");
                ENROLL_POLL_MAX
            }
        };
        if wait.is_zero() {
            continue;
        }
        let wake = shared.enroll_wake.1.clone();
        smol::future::or(
            async {
                smol::Timer::after(wait).await;
            },
            async {
                let _ = wake.recv().await;
            },
        )
        .await;
    }
}

/// Check the identity files on SIGHUP and every poll interval; push changed subjects.
pub(super) async fn watch_identity(shared: Arc<Shared>, reload: smol::channel::Receiver<()>) {
    let interval = shared.prov.config.identity.poll_interval;
    loop {
        // A closed channel (the signal thread has ended) means no more HUPs: the timer alone.
        let hup = smol::future::or(
            async {
                match reload.recv().await {
                    Ok(()) => true,
                    Err(_) => smol::future::pending().await,
                }
            },
            async {
                smol::Timer::after(interval).await;
                false
            },
        )
        .await;
        let s = shared.clone();
        blocking::unblock(move || s.revocable.recheck(&s.prov.config, hup)).await;
        let s = shared.clone();
        if let Some(subjects) = blocking::unblock(move || s.identity.refresh()).await {
            crate::log_notice!(
                "subjects changed ({} now){}",
                subjects.len(),
                if hup { " on SIGHUP" } else { "" }
            );
            shared.subjects.send(subjects);
        }
    }
}
