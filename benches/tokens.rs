//! `make bench`, the tokens: a key made and a signature made inside SoftHSM (the baseline)
//! and inside a software TPM (swtpm) through tpm2-pkcs11 behind a resource manager that
//! keeps three objects per client, as the kernel's /dev/tpmrm0 does, in the same run. The
//! TPM store logs out after each operation (`release_objects`, its default); the last line
//! signs with the session kept, which such a resource manager allows for one key only, to
//! show what the release costs. Figures are medians, with ratios against SoftHSM.

#[path = "../tests/common/mod.rs"]
mod harness;
use aos_iam::config::{Algorithm, Pkcs11Config, TokenSelector};
use aos_iam::secret::Secret;
use aos_iam::store::keystore::{self, pkcs11::Pkcs11Store, KeyStore};
use std::time::{Duration, Instant};

const KEYS: usize = 5;
const SIGNATURES: usize = 20;

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort_unstable();
    d[d.len() / 2]
}

/// Median key generation and signature (P-256) on `store`.
fn measure(store: &dyn KeyStore) -> (Duration, Duration) {
    let mut keygen = Vec::new();
    let mut ids = Vec::new();
    for i in 0..KEYS {
        let id = keystore::new_key_id().unwrap();
        let t = Instant::now();
        store.generate(&format!("bench{i}"), &id, Algorithm::EcdsaP256).unwrap();
        keygen.push(t.elapsed());
        ids.push((format!("bench{i}"), id));
    }
    let mut sign = Vec::new();
    for i in 0..SIGNATURES {
        let (label, id) = &ids[i % ids.len()];
        let t = Instant::now();
        store
            .sign(label, id, Algorithm::EcdsaP256, b"a handshake's transcript")
            .unwrap();
        sign.push(t.elapsed());
    }
    (median(keygen), median(sign))
}

fn config(library: &str, token: TokenSelector, dir: &std::path::Path, release: Option<bool>) -> Pkcs11Config {
    Pkcs11Config {
        library: library.into(),
        token,
        init_label: "bench".into(),
        user_pin_file: dir.join("user-pin"),
        shared: false,
        release_objects: release,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("aos-iam-bench-tokens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let password = Secret::new("factory-secret".into());

    std::env::set_var("SOFTHSM2_CONF", harness::softhsm_dir(&dir.join("softhsm")));
    let softhsm = Pkcs11Store::new(config(
        harness::SOFTHSM,
        TokenSelector::Label("bench".into()),
        &dir.join("softhsm"),
        None,
    ))
    .unwrap();
    softhsm.take_ownership(&password, &[]).unwrap();
    let (sh_gen, sh_sign) = measure(&softhsm);

    let tpm = harness::tpm::Tpm::start_with(&dir, Some(3));
    for (k, v) in &tpm.env {
        std::env::set_var(k, v);
    }
    let released = Pkcs11Store::new(config(
        harness::tpm::TPM2_PKCS11,
        TokenSelector::SlotIndex(0),
        &dir,
        None,
    ))
    .unwrap();
    released.take_ownership(&password, &[]).unwrap();
    let (tpm_gen, tpm_sign) = measure(&released);
    // The session kept: one key only, or the resource manager runs out of objects.
    let kept = Pkcs11Store::new(config(
        harness::tpm::TPM2_PKCS11,
        TokenSelector::SlotIndex(0),
        &dir,
        Some(false),
    ))
    .unwrap();
    let one = keystore::new_key_id().unwrap();
    kept.generate("kept", &one, Algorithm::EcdsaP256).unwrap();
    let kept_sign = median(
        (0..SIGNATURES)
            .map(|_| {
                let t = Instant::now();
                kept.sign("kept", &one, Algorithm::EcdsaP256, b"a handshake's transcript")
                    .unwrap();
                t.elapsed()
            })
            .collect(),
    );

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let row = |what: &str, d: Duration, base: Duration| {
        println!("{what:<58} {:>8.2} ms ({:.1}x)", ms(d), ms(d) / ms(base));
    };
    row("SoftHSM: P-256 key made (the baseline)", sh_gen, sh_gen);
    row(
        "TPM (swtpm, tpm2-pkcs11, 3 objects/client): P-256 key made",
        tpm_gen,
        sh_gen,
    );
    row("SoftHSM: P-256 signature (the baseline)", sh_sign, sh_sign);
    row("TPM: P-256 signature, logged out after each", tpm_sign, sh_sign);
    row("TPM: P-256 signature, session kept (one key)", kept_sign, sh_sign);
    // The sessions close (and log out) while the TPM is still there.
    drop((softhsm, released, kept));
    drop(tpm);
    let _ = std::fs::remove_dir_all(&dir);
}
