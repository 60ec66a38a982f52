//! Certificate health as monitoring sees it (`iam-certctl check`): each certificate rated
//! ok, warning or critical, with the reason, by the conventions of monitoring plugins.
//!
//! A current certificate is critical when its objects are missing from the store, its chain
//! no longer validates, or it expires within the critical window; a warning within the
//! warning window. A certificate that is no longer current matters only if its objects
//! are missing (it is kept for rotation, not served).

use crate::proto::wire::CertCheck;

pub const DEFAULT_WARNING_DAYS: u32 = 30;
pub const DEFAULT_CRITICAL_DAYS: u32 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }
    /// The monitoring-plugin exit code (3, unknown, is for a check that could not run).
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

/// A certificate's rating and why.
#[derive(Debug, Clone)]
pub struct Rating {
    pub level: Level,
    pub reason: String,
    /// Whole days until it expires (negative once expired).
    pub days_left: i64,
}

pub fn rate(c: &CertCheck, now: i64, warning_days: u32, critical_days: u32) -> Rating {
    let days_left = (c.info.not_after - now).div_euclid(86_400);
    let (level, reason) = if !c.key_present {
        (Level::Critical, "its private key is missing from the store".to_string())
    } else if !c.cert_present {
        (
            Level::Critical,
            "its certificate object is missing from the store".to_string(),
        )
    } else if !c.info.current {
        (Level::Ok, "not current (kept for rotation)".to_string())
    } else if !c.chain_error.is_empty() {
        (
            Level::Critical,
            format!("the chain does not validate: {}", c.chain_error),
        )
    } else if days_left < critical_days as i64 {
        (Level::Critical, format!("expires in {days_left} day(s)"))
    } else if days_left < warning_days as i64 {
        (Level::Warning, format!("expires in {days_left} day(s)"))
    } else {
        (Level::Ok, format!("valid for {days_left} more day(s)"))
    };
    Rating {
        level,
        reason,
        days_left,
    }
}

/// A current certificate whose module renews with a threshold at least as long as its
/// lifetime is a warning: iamd finds it due the moment it is issued, and only the floor
/// between renewals keeps them apart (the log says so when it is applied).
pub fn rate_renewal(c: &CertCheck, rating: &mut Rating, policy: Option<&crate::config::RenewPolicy>) {
    let Some(policy) = policy else { return };
    if !c.info.current || !policy.outlasts(c.info.not_before, c.info.not_after) {
        return;
    }
    let note = format!(
        "its renewal threshold is at least its lifetime ({} s): renewed again at each floor, not by the \
         threshold; shorten [modules.renew] threshold or ask the CA for longer certificates",
        c.info.not_after - c.info.not_before
    );
    if rating.level == Level::Ok {
        rating.level = Level::Warning;
        rating.reason = note;
    } else {
        rating.reason = format!("{}; {note}", rating.reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::CertInfo;

    fn check(days: i64, current: bool) -> CertCheck {
        CertCheck {
            info: CertInfo {
                cert_type: "iam".into(),
                issuer: String::new(),
                issuer_der: vec![],
                serial: vec![1],
                subject: String::new(),
                not_before: 0,
                not_after: days * 86_400 + 10,
                cert_url: String::new(),
                key_url: String::new(),
                current,
            },
            chain_error: String::new(),
            key_present: true,
            cert_present: true,
        }
    }

    #[test]
    fn expiry_windows_and_missing_objects_set_the_level() {
        assert_eq!(rate(&check(60, true), 0, 30, 7).level, Level::Ok);
        assert_eq!(rate(&check(20, true), 0, 30, 7).level, Level::Warning);
        assert_eq!(rate(&check(3, true), 0, 30, 7).level, Level::Critical);
        assert_eq!(rate(&check(3, false), 0, 30, 7).level, Level::Ok);
        let mut gone = check(60, false);
        gone.cert_present = false;
        assert_eq!(rate(&gone, 0, 30, 7).level, Level::Critical);
        let mut broken = check(60, true);
        broken.chain_error = "UnknownIssuer".into();
        assert_eq!(rate(&broken, 0, 30, 7).level, Level::Critical);
        assert_eq!(Level::Warning.exit_code(), 1);
    }
}
