//! One behavioural suite that both key stores pass: the PKCS#11 store on a real SoftHSM
//! token and the software store on real files. Signatures are checked with ring against
//! the public key the store reports; certificates are real (self-signed by the stored key).

mod common;

use aos_iam::config::{Algorithm, Pkcs11Config, TokenSelector};
use aos_iam::pki::x509::{self, StoredKey};
use aos_iam::secret::Secret;
use aos_iam::store::keystore::{self, pkcs11::Pkcs11Store, software::SoftwareStore, KeyStore, ObjectKind};
use aos_iam::ErrorKind;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, RSA_PKCS1_2048_8192_SHA256};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("aos-iam-ks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn verify(alg: Algorithm, public: &[u8], msg: &[u8], sig: &[u8]) {
    let a: &dyn ring::signature::VerificationAlgorithm = match alg {
        Algorithm::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
        Algorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
        Algorithm::Rsa2048 => &RSA_PKCS1_2048_8192_SHA256,
    };
    UnparsedPublicKey::new(a, public)
        .verify(msg, sig)
        .unwrap_or_else(|_| panic!("{alg:?} signature verifies"));
}

fn suite(store: &dyn KeyStore, algorithms: &[Algorithm]) {
    let password = Secret::new("factory-secret".into());
    store.take_ownership(&password, &[]).unwrap();
    assert!(
        store.objects().unwrap().is_empty(),
        "ownership starts from an empty store"
    );

    let mut ids = Vec::new();
    for (i, alg) in algorithms.iter().enumerate() {
        let label = format!("type{i}");
        let id = keystore::new_key_id().unwrap();
        let public = store.generate(&label, &id, *alg).unwrap();
        assert_eq!(public.algorithm, *alg);
        assert_eq!(
            store.public_key(&label, &id).unwrap().as_ref(),
            Some(&public),
            "{alg:?}: public key reads back"
        );

        let msg = b"a message signed inside the store";
        verify(*alg, &public.raw, msg, &store.sign(&label, &id, *alg, msg).unwrap());

        // A certificate made with the stored key, stored next to it, replaced by a second.
        let key = StoredKey {
            store,
            label: &label,
            id,
            public: public.clone(),
        };
        let first = x509::self_signed(&key, "CN=first", &[], &[], 1).unwrap();
        let second = x509::self_signed(&key, "CN=second", &[], &[], 1).unwrap();
        assert_eq!(
            x509::fields(&first).unwrap().public_key,
            public.raw,
            "the certificate carries the stored key"
        );
        store.store_certificate(&label, &id, &first).unwrap();
        store.store_certificate(&label, &id, &second).unwrap();
        assert_eq!(store.certificate(&label, &id).unwrap(), Some(second));
        let of: Vec<_> = store.objects().unwrap().into_iter().filter(|o| o.id == id).collect();
        assert_eq!(
            of.iter().filter(|o| o.kind == ObjectKind::Certificate).count(),
            1,
            "a stored certificate replaces the old one"
        );
        assert!(of.iter().all(|o| o.label == label));
        assert!(of.iter().any(|o| o.kind == ObjectKind::PrivateKey));

        assert!(!store.key_url(&label, &id).is_empty() && store.key_url(&label, &id) != store.cert_url(&label, &id));
        ids.push((label, id));
    }

    // Removal takes key and certificate, is idempotent, and leaves other keys alone.
    let (label, id) = ids.remove(0);
    store.remove(&label, &id).unwrap();
    store.remove(&label, &id).unwrap();
    assert!(store.objects().unwrap().iter().all(|o| o.id != id));
    assert_eq!(store.public_key(&label, &id).unwrap(), None);
    assert_eq!(store.certificate(&label, &id).unwrap(), None);
    let e = store.sign(&label, &id, algorithms[0], b"x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(!store.objects().unwrap().is_empty(), "the other keys remain");

    store.wipe(&password, &[]).unwrap();
}

#[test]
fn the_software_store_passes_the_suite() {
    let dir = tmp("sw");
    let store = SoftwareStore::new(dir.join("keys"));
    suite(&store, &[Algorithm::EcdsaP384, Algorithm::EcdsaP256]);
    assert!(!dir.join("keys").exists(), "wipe removes the files");
    // RSA is refused clearly (configuration refuses it earlier).
    store.take_ownership(&Secret::new("x".into()), &[]).unwrap();
    let e = store
        .generate("t", &keystore::new_key_id().unwrap(), Algorithm::Rsa2048)
        .unwrap_err();
    assert!(e.message.contains("ECDSA keys only"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The PKCS#11 store on SoftHSM. SoftHSM reads SOFTHSM2_CONF once per process, so the
/// token lives in this test binary's own directory.
#[test]
fn the_pkcs11_store_passes_the_suite_on_softhsm() {
    let dir = tmp("p11");
    std::env::set_var("SOFTHSM2_CONF", common::softhsm_dir(&dir));
    let config = Pkcs11Config {
        library: "/usr/lib/softhsm/libsofthsm2.so".into(),
        token: TokenSelector::Label("suite".into()),
        init_label: "suite".into(),
        user_pin_file: dir.join("user-pin"),
        shared: false,
        release_objects: None,
    };
    let store = Pkcs11Store::new(config.clone()).unwrap();
    // Wiping a blank token (deprovisioning a node never provisioned) does not initialise it.
    store.wipe(&Secret::new("whatever".into()), &[]).unwrap();
    let blank = std::process::Command::new("softhsm2-util")
        .arg("--show-slots")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&blank.stdout).contains("suite"),
        "no token was initialised"
    );
    suite(
        &store,
        &[Algorithm::EcdsaP384, Algorithm::EcdsaP256, Algorithm::Rsa2048],
    );
    assert!(!dir.join("user-pin").exists(), "wipe removes the user PIN file");

    // The token belongs to the password now: another one is refused, naming the CKR value.
    let e = store
        .take_ownership(&Secret::new("another-password".into()), &[])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert!(
        e.message.contains("CKR_PIN_INCORRECT") && e.message.contains("token label \"suite\""),
        "{e}"
    );
    // A password the token cannot take as a PIN is refused as such.
    let e = store.take_ownership(&Secret::new("abc".into()), &[]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("takes 4 to"), "{e}");

    // Another store object for the same token (a second module) sees the same keys.
    store
        .take_ownership(&Secret::new("factory-secret".into()), &[])
        .unwrap();
    let id = keystore::new_key_id().unwrap();
    store.generate("shared", &id, Algorithm::EcdsaP256).unwrap();
    let twin = Pkcs11Store::new(config.clone()).unwrap();
    assert!(twin.public_key("shared", &id).unwrap().is_some());

    // The same token named by serial and by slot index.
    let slots = std::process::Command::new("softhsm2-util")
        .arg("--show-slots")
        .output()
        .unwrap();
    let slots = String::from_utf8_lossy(&slots.stdout).into_owned();
    let serial = slots
        .split("\nSlot ")
        .find(|block| {
            block
                .lines()
                .any(|l| l.trim().strip_prefix("Label:").is_some_and(|v| v.trim() == "suite"))
        })
        .and_then(|block| block.lines().find_map(|l| l.trim().strip_prefix("Serial number:")))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("serial of token \"suite\" in:\n{slots}"));
    let by_serial = Pkcs11Store::new(Pkcs11Config {
        token: TokenSelector::Serial(serial.clone()),
        ..config.clone()
    })
    .unwrap();
    assert!(by_serial.public_key("shared", &id).unwrap().is_some());
    assert!(by_serial
        .key_url("shared", &id)
        .starts_with(&format!("pkcs11:serial={serial};object=shared;id=")));
    let by_index = Pkcs11Store::new(Pkcs11Config {
        token: TokenSelector::SlotIndex(0),
        ..config.clone()
    })
    .unwrap();
    assert!(by_index.public_key("shared", &id).unwrap().is_some());
    let missing = Pkcs11Store::new(Pkcs11Config {
        token: TokenSelector::Serial("no-such-serial".into()),
        ..config
    })
    .unwrap();
    let e = missing.public_key("shared", &id).unwrap_err();
    assert!(
        e.message.contains("token serial \"no-such-serial\": no such token"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_token_that_goes_away_and_comes_back_is_used_again_without_a_restart() {
    let node = common::Node::provisioned("tok-away");
    let check = |n: &common::Node| n.applet("iam-certctl", &["-s", &n.protected(), "--json", "check"], None);
    let serial = node.list_certs().into_iter().find(|c| c["type"] == "iam").unwrap()["serial"].clone();
    assert_eq!(check(&node).code, 0);
    // The token's directory goes away (a USB token unplugged, a resource manager down):
    // check says the token is absent, not that every key is missing.
    std::fs::rename(node.path("tokens"), node.path("tokens.away")).unwrap();
    std::fs::create_dir(node.path("tokens")).unwrap();
    let out = check(&node);
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(out.stdout.contains("it is absent"), "{}", out.stdout);
    assert!(!out.stdout.contains("missing from the store"), "{}", out.stdout);
    // It comes back: used again without a restart (looked for again at most every 2 s).
    std::fs::remove_dir(node.path("tokens")).unwrap();
    std::fs::rename(node.path("tokens.away"), node.path("tokens")).unwrap();
    let start = std::time::Instant::now();
    loop {
        let out = check(&node);
        if out.code == 0 {
            assert!(out.stdout.contains("\"status\":\"OK\""), "{}", out.stdout);
            break;
        }
        assert!(out.stdout.contains("it is absent"), "{}", out.stdout);
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "{}", out.stdout);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The same certificate is served, and iamd's session on the token works: a renewal
    // generates a key and signs its CSR there.
    let cert = node.list_certs().into_iter().find(|c| c["serial"] == serial).unwrap();
    assert_eq!(cert["current"], true);
    let (ca, key, pw) = (node.p("ca.pem"), node.p("ca.key"), node.p("password"));
    let renewed = node
        .applet(
            "iam-certctl",
            &[
                "-s",
                &node.protected(),
                "--json",
                "renew",
                "online",
                "--ca-cert",
                &ca,
                "--ca-key",
                &key,
                "--password-file",
                &pw,
            ],
            None,
        )
        .ok()
        .json();
    assert!(renewed["certificate"]["serial"].is_string(), "{renewed}");
    assert!(node.log().contains("was initialised again"), "{}", node.log());
}

/// The PKCS#11 store on a TPM 2.0 (swtpm behind tpm2-abrmd, the tpm2-pkcs11 module): the
/// same suite. Where the module differs from SoftHSM — key usages it derives itself, a token
/// it cannot initialise twice (emptied under its SO PIN instead) — the store's answers do not.
#[test]
fn the_pkcs11_store_passes_the_suite_on_a_software_tpm() {
    let dir = tmp("tpm");
    let tpm = common::tpm::Tpm::start(&dir);
    // The module reads its environment when it is initialised, in this process.
    for (k, v) in &tpm.env {
        std::env::set_var(k, v);
    }
    let config = Pkcs11Config {
        library: common::tpm::TPM2_PKCS11.into(),
        token: TokenSelector::SlotIndex(0),
        init_label: "suite".into(),
        user_pin_file: dir.join("user-pin"),
        shared: false,
        release_objects: None,
    };
    let store = Pkcs11Store::new(config.clone()).unwrap();
    suite(
        &store,
        &[Algorithm::EcdsaP384, Algorithm::EcdsaP256, Algorithm::Rsa2048],
    );
    // Once more on the token it initialised: emptied and taken over again.
    suite(&store, &[Algorithm::EcdsaP256, Algorithm::EcdsaP384]);
    assert!(!dir.join("user-pin").exists(), "wipe removes the user PIN file");
    // The token belongs to the password: another one is refused, naming the CKR value.
    let e = store
        .take_ownership(&Secret::new("another-password".into()), &[])
        .unwrap_err();
    assert!(e.message.contains("CKR_PIN_INCORRECT"), "{e}");
    drop(tpm);
    std::fs::remove_dir_all(dir).unwrap();
}
