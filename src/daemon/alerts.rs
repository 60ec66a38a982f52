//! Alerts that reach someone: a current certificate crossing its warning or critical
//! threshold (`[alerts]`, 30 and 7 days by default), the node quarantined, its id not the one
//! it was provisioned under. Each is logged once, sent to `SubscribeAlerts` subscribers, and
//! given to `[alerts] hook` (a status LED, a diagnostic agent) on its standard input as one
//! JSON object. A certificate is alerted once per threshold; after a restart, a certificate
//! already past one is alerted again, once.

use super::broadcast::Broadcast;
use crate::config::{AlertsConfig, Config, MAX_SUBSCRIBERS, SUBSCRIBER_BACKLOG};
use crate::proto::wire::{Alert, AlertKind, CertInfo};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

const DAY: i64 = 24 * 3600;

pub struct Alerts {
    pub events: Broadcast<Alert>,
    config: AlertsConfig,
    node_id: String,
    hook_timeout: Duration,
    /// The threshold each certificate (type, serial) was last alerted at.
    raised: Mutex<BTreeMap<(String, Vec<u8>), AlertKind>>,
}

impl Alerts {
    pub fn new(config: &Config) -> Alerts {
        Alerts {
            events: Broadcast::new("alert", MAX_SUBSCRIBERS, SUBSCRIBER_BACKLOG),
            config: config.alerts.clone(),
            node_id: config.node_id.clone(),
            hook_timeout: config.hooks.timeout,
            raised: Mutex::new(BTreeMap::new()),
        }
    }

    /// An alert about the node itself (quarantine, id changed).
    pub fn node(&self, kind: AlertKind, message: String) {
        self.raise(Alert {
            kind,
            node_id: self.node_id.clone(),
            cert_type: String::new(),
            serial: Vec::new(),
            not_after: 0,
            message,
        });
    }

    /// Look at the current certificates (at `now`): alert those that crossed a threshold since
    /// they were last looked at.
    pub fn look_at(&self, certs: &[CertInfo], now: i64) {
        let mut raised = crate::sys::lock(&self.raised);
        // Certificates no longer current are forgotten: a renewal gives a new serial.
        raised.retain(|(t, s), _| certs.iter().any(|c| c.current && c.cert_type == *t && c.serial == *s));
        for c in certs.iter().filter(|c| c.current) {
            let left = c.not_after - now;
            let (kind, threshold, days) = if left <= i64::from(self.config.critical_days) * DAY {
                (AlertKind::CertCritical, "critical", self.config.critical_days)
            } else if left <= i64::from(self.config.warning_days) * DAY {
                (AlertKind::CertWarning, "warning", self.config.warning_days)
            } else {
                continue;
            };
            let key = (c.cert_type.clone(), c.serial.clone());
            if raised.get(&key).is_some_and(|k| *k >= kind) {
                continue;
            }
            raised.insert(key, kind);
            let when = match left {
                l if l <= 0 => "has expired".to_string(),
                l if l < DAY => format!("expires in {} hour(s)", (l + 3599) / 3600),
                l => format!("expires in {} day(s)", l / DAY),
            };
            self.raise(Alert {
                kind,
                node_id: self.node_id.clone(),
                cert_type: c.cert_type.clone(),
                serial: c.serial.clone(),
                not_after: c.not_after,
                message: format!(
                    "the {} certificate {} {when} ({threshold} threshold: {days} days)",
                    c.cert_type,
                    crate::codec::hex(&c.serial),
                ),
            });
        }
    }

    /// Log it, send it to subscribers, and hand it to the hook (on a thread of its own: a
    /// slow hook holds nothing up).
    fn raise(&self, alert: Alert) {
        match alert.kind {
            AlertKind::CertWarning => crate::log_warn!("alert {}: {}", alert.kind.name(), alert.message),
            _ => crate::log_error!("alert {}: {}", alert.kind.name(), alert.message),
        }
        if let Some(argv) = self.config.hook.clone() {
            let json = json(&alert);
            let timeout = self.hook_timeout;
            let name = alert.kind.name();
            std::thread::spawn(move || {
                let mut cmd = std::process::Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                match crate::sys::command::run(cmd, "alert hook", Some(json.as_bytes()), 4096, timeout) {
                    Ok(done) if done.status.success() => crate::log_debug!("alert hook ran for {name}"),
                    Ok(done) => crate::log_warn!("alert hook for {name} failed ({}): {}", done.status, done.stderr),
                    Err(e) => crate::log_warn!("alert hook for {name}: {e}"),
                }
            });
        }
        self.events.send(alert);
    }
}

/// The alert as the hook reads it: one JSON object on one line.
pub fn json(a: &Alert) -> String {
    let mut o = serde_json::json!({
        "alert": a.kind.name(),
        "node_id": a.node_id,
        "message": a.message,
        "time": crate::sys::now(),
    });
    if !a.cert_type.is_empty() {
        o["cert_type"] = a.cert_type.clone().into();
        o["serial"] = crate::codec::hex(&a.serial).into();
        o["not_after"] = a.not_after.into();
    }
    o.to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(t: &str, serial: u8, not_after: i64) -> CertInfo {
        CertInfo {
            cert_type: t.into(),
            issuer: String::new(),
            issuer_der: vec![],
            serial: vec![serial],
            subject: String::new(),
            not_before: 0,
            not_after,
            current: true,
            key_url: String::new(),
            cert_url: String::new(),
        }
    }

    #[test]
    fn each_certificate_is_alerted_once_per_threshold_and_a_renewed_one_afresh() {
        let config = Config::from_sources(&[(
            "c".into(),
            "[node]\nid = \"n\"\n[paths]\nworking_dir = \"/tmp/w\"\n[[modules]]\nid = \"iam\"\nstore = \"software\"\nself_signed = true\n"
                .into(),
        )])
        .unwrap();
        let alerts = Alerts::new(&config);
        let (_, rx) = alerts.events.subscribe(0).unwrap();
        let now = 1_000_000_000;
        let seen = || {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|a| (a.kind, a.serial))
                .collect::<Vec<_>>()
        };
        alerts.look_at(&[cert("iam", 1, now + 40 * DAY)], now);
        assert_eq!(seen(), []);
        alerts.look_at(&[cert("iam", 1, now + 40 * DAY)], now + 11 * DAY);
        assert_eq!(seen(), [(AlertKind::CertWarning, vec![1])]);
        alerts.look_at(&[cert("iam", 1, now + 40 * DAY)], now + 12 * DAY);
        assert_eq!(seen(), [], "once per threshold");
        alerts.look_at(&[cert("iam", 1, now + 40 * DAY)], now + 34 * DAY);
        assert_eq!(seen(), [(AlertKind::CertCritical, vec![1])]);
        alerts.look_at(&[cert("iam", 1, now + 40 * DAY)], now + 41 * DAY);
        assert_eq!(seen(), []);
        // Renewed: the new certificate is looked at afresh.
        alerts.look_at(&[cert("iam", 2, now + 45 * DAY)], now + 41 * DAY);
        assert_eq!(seen(), [(AlertKind::CertCritical, vec![2])]);
        let mut a = cert("iam", 3, now + 2 * DAY);
        a.current = false;
        alerts.look_at(&[a], now);
        assert_eq!(seen(), [], "only current certificates");
    }
}
