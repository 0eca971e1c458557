//! The client certificate of one database (`*_SSLCERT` / `*_SSLKEY`, libpq's meaning) and the files behind a
//! connection that may change while the daemon runs (password file, CA file, certificate, key).
//!
//! Owns: [`load`] (reads the PEM certificate, checks the key file's permissions as libpq does, reads the key in
//! any PEM form OpenSSL knows — PKCS#8, PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY` — and hands it to
//! native-tls as PKCS#8, which is the only form `Identity::from_pkcs8` takes; refuses an encrypted key, a key
//! that does not belong to the certificate, and names the file in every message), [`ClientIdentity`] (the
//! identity plus the certificate's subject and notAfter, for messages, /status and /metrics),
//! [`check_key_permissions`] and [`FileStamp`] (what tells a connector that one of its files was replaced).
//! Does not own: the TLS connector (db.rs), reading the variables (config/read.rs).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::X509;

/// A client certificate and its key, loaded and checked.
pub struct ClientIdentity {
    pub identity: native_tls::Identity,
    /// The certificate's notAfter, Unix seconds.
    pub not_after_unix: i64,
    /// The certificate's subject CN (what `cert` authentication compares with the user name), or "".
    pub subject_cn: String,
}

/// Reads and checks `cert` and `key` (PEM). Every error names the file and what to do about it.
pub fn load(cert: &Path, key: &Path) -> Result<ClientIdentity, String> {
    let cert_pem = read_small(cert, "client certificate")?;
    let chain = X509::stack_from_pem(&cert_pem)
        .map_err(|e| format!("client certificate {} is not a PEM certificate: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "client certificate {} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    };
    check_key_permissions(key)?;
    let key_pem = read_small(key, "client key")?;
    let text = String::from_utf8_lossy(&key_pem);
    if text.contains("ENCRYPTED") {
        return Err(format!(
            "client key {} is encrypted with a passphrase, which sync-process cannot ask for: store it \
             unencrypted (openssl pkey -in {0} -out NEW.key) and protect it with chmod 600",
            key.display()
        ));
    }
    // The callback answers any passphrase prompt with nothing, so OpenSSL never asks on a terminal.
    let pkey = PKey::private_key_from_pem_callback(&key_pem, |_| Ok(0)).map_err(|e| {
        format!(
            "client key {} is not a PEM private key (accepted: PKCS#8 \"BEGIN PRIVATE KEY\", PKCS#1 \"BEGIN RSA \
             PRIVATE KEY\", SEC1 \"BEGIN EC PRIVATE KEY\"): {e}",
            key.display()
        )
    })?;
    let matches = leaf.public_key().map(|public| pkey.public_eq(&public)).unwrap_or(false);
    if !matches {
        return Err(format!(
            "client key {} does not belong to the client certificate {}",
            key.display(),
            cert.display()
        ));
    }
    // native-tls (OpenSSL) takes the key only as PKCS#8 PEM: convert whatever form it was in.
    let pkcs8 = pkey
        .private_key_to_pem_pkcs8()
        .map_err(|e| format!("client key {}: cannot convert it to PKCS#8: {e}", key.display()))?;
    let identity = native_tls::Identity::from_pkcs8(&cert_pem, &pkcs8)
        .map_err(|e| format!("client certificate {} with key {}: {e}", cert.display(), key.display()))?;
    let not_after_unix = Asn1Time::from_unix(0)
        .and_then(|epoch| epoch.diff(leaf.not_after()))
        .map(|d| i64::from(d.days) * 86_400 + i64::from(d.secs))
        .map_err(|e| format!("client certificate {}: cannot read its notAfter: {e}", cert.display()))?;
    let subject_cn = leaf
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default();
    Ok(ClientIdentity {
        identity,
        not_after_unix,
        subject_cn,
    })
}

/// libpq's rule for the private key file (fe-secure-openssl.c): a regular file; owned by root it may be
/// readable by its group (0640 or less, so a group such as sync-process can share it), otherwise it must be
/// 0600 or less.
pub fn check_key_permissions(key: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(key).map_err(|e| format!("client key {}: {e}", key.display()))?;
    if !meta.is_file() {
        return Err(format!("client key {} is not a regular file", key.display()));
    }
    if let Some(problem) = key_permission_problem(meta.uid(), meta.mode()) {
        return Err(format!("client key {} {problem}", key.display()));
    }
    Ok(())
}

/// What is wrong with a key file of this owner and mode, in libpq's terms; None when it is private enough.
pub fn key_permission_problem(uid: u32, mode: u32) -> Option<String> {
    let (group_write_exec, group_all, other_all) = (0o030, 0o070, 0o007);
    let refused = if uid == 0 {
        mode & (group_write_exec | other_all) != 0
    } else {
        mode & (group_all | other_all) != 0
    };
    refused.then(|| {
        format!(
            "has group or world access (mode {:04o}): it must be u=rw (0600) or less if owned by the user \
             sync-process runs as, or u=rw,g=r (0640) or less if owned by root; fix: chmod 600 the file (or \
             chown root:sync-process and chmod 640)",
            mode & 0o7777
        )
    })
}

/// At most this much of a certificate or key file is read (a wrong path such as /dev/zero cannot exhaust
/// memory).
const FILE_LIMIT: u64 = 1024 * 1024;

fn read_small(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(FILE_LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > FILE_LIMIT {
        return Err(format!("{what} {} is larger than {FILE_LIMIT} bytes", path.display()));
    }
    Ok(bytes)
}

/// What a file looked like: changes when it is rewritten, replaced (a new inode, as `mv` or a symlink swap
/// under /run/credentials do) or its mode changes. A file that cannot be read has no stamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp(Option<[i128; 8]>);

impl FileStamp {
    pub fn of(path: &Path) -> FileStamp {
        FileStamp(std::fs::metadata(path).ok().map(|m| {
            [
                i128::from(m.dev()),
                i128::from(m.ino()),
                i128::from(m.len()),
                i128::from(m.mtime()),
                i128::from(m.mtime_nsec()),
                i128::from(m.ctime()),
                i128::from(m.ctime_nsec()),
                i128::from(m.mode()),
            ]
        }))
    }

    /// The stamps of `paths`, in order.
    pub fn all<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Vec<FileStamp> {
        paths.into_iter().map(|p| FileStamp::of(p)).collect()
    }
}

/// Throwaway certificates for unit tests (the integration tests use the openssl CLI and a real server).
#[cfg(test)]
pub(crate) mod testing {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::{X509Builder, X509NameBuilder};

    pub fn ec_key() -> EcKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
        EcKey::generate(&group).expect("EC key")
    }

    /// A self-signed certificate for `cn` valid `days` days (negative: already expired), as PEM.
    pub fn self_signed(key: &PKey<Private>, cn: &str, days: i64) -> Vec<u8> {
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
        let name = name.build();
        let mut b = X509Builder::new().expect("builder");
        b.set_version(2).expect("version");
        b.set_serial_number(&BigNum::from_u32(1).and_then(|n| n.to_asn1_integer()).expect("serial"))
            .expect("serial");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(&name).expect("issuer");
        b.set_pubkey(key).expect("pubkey");
        let now = super::super::unix_now();
        b.set_not_before(&Asn1Time::from_unix(now - 86_400 * 30).expect("t"))
            .expect("nb");
        b.set_not_after(&Asn1Time::from_unix(now + 86_400 * days).expect("t"))
            .expect("na");
        b.sign(key, MessageDigest::sha256()).expect("sign");
        b.build().to_pem().expect("pem")
    }

    /// Writes `bytes` to `dir/name` with `mode`.
    pub fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("writing a test file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    /// A certificate for `cn` and its PKCS#8 key, written to `dir` (key 0600).
    pub fn cert_and_key(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let key = PKey::from_ec_key(ec_key()).expect("pkey");
        let cert = write(dir, "client.crt", &self_signed(&key, cn, 365), 0o644);
        let key = write(
            dir,
            "client.key",
            &key.private_key_to_pem_pkcs8().expect("pkcs8"),
            0o600,
        );
        (cert, key)
    }

    pub fn temp_dir(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sync-process-unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::symm::Cipher;

    #[test]
    fn every_pem_key_form_is_accepted_and_converted_to_pkcs8() {
        let dir = temp_dir("keyforms");
        let ec = ec_key();
        let ec_pkey = PKey::from_ec_key(ec.clone()).expect("pkey");
        let rsa = Rsa::generate(2048).expect("rsa");
        let rsa_pkey = PKey::from_rsa(rsa.clone()).expect("pkey");
        let cases: [(&str, &PKey<openssl::pkey::Private>, Vec<u8>, &str); 4] = [
            (
                "pkcs8-ec",
                &ec_pkey,
                ec_pkey.private_key_to_pem_pkcs8().expect("pem"),
                "BEGIN PRIVATE KEY",
            ),
            (
                "sec1-ec",
                &ec_pkey,
                ec.private_key_to_pem().expect("pem"),
                "BEGIN EC PRIVATE KEY",
            ),
            (
                "pkcs1-rsa",
                &rsa_pkey,
                rsa.private_key_to_pem().expect("pem"),
                "BEGIN RSA PRIVATE KEY",
            ),
            (
                "pkcs8-rsa",
                &rsa_pkey,
                rsa_pkey.private_key_to_pem_pkcs8().expect("pem"),
                "BEGIN PRIVATE KEY",
            ),
        ];
        for (name, pkey, pem, header) in cases {
            assert!(String::from_utf8_lossy(&pem).contains(header), "{name}");
            let cert = write(&dir, &format!("{name}.crt"), &self_signed(pkey, "box-1", 30), 0o644);
            let key = write(&dir, &format!("{name}.key"), &pem, 0o600);
            let loaded = load(&cert, &key).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(loaded.subject_cn, "box-1", "{name}");
            let days = (loaded.not_after_unix - super::super::unix_now()) / 86_400;
            assert!((29..=30).contains(&days), "{name}: {days}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unusable_keys_are_refused_naming_the_file() {
        let dir = temp_dir("badkeys");
        let pkey = PKey::from_ec_key(ec_key()).expect("pkey");
        let cert = write(&dir, "c.crt", &self_signed(&pkey, "box-1", 30), 0o644);
        let other = PKey::from_ec_key(ec_key()).expect("pkey");
        let encrypted = pkey
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_128_cbc(), b"secret")
            .expect("pem");
        let cases: [(&str, Vec<u8>, u32, &str); 5] = [
            (
                "world.key",
                pkey.private_key_to_pem_pkcs8().expect("pem"),
                0o644,
                "chmod 600",
            ),
            (
                "other.key",
                other.private_key_to_pem_pkcs8().expect("pem"),
                0o600,
                "does not belong",
            ),
            ("enc.key", encrypted, 0o600, "encrypted"),
            ("junk.key", b"not a key".to_vec(), 0o600, "not a PEM private key"),
            (
                "cert-as.key",
                self_signed(&pkey, "x", 1),
                0o600,
                "not a PEM private key",
            ),
        ];
        for (name, pem, mode, needle) in cases {
            let key = write(&dir, name, &pem, mode);
            let msg = load(&cert, &key).err().unwrap_or_default();
            assert!(msg.contains(needle), "{name}: {msg}");
            assert!(msg.contains(&key.display().to_string()), "{name} names the file: {msg}");
        }
        let missing = dir.join("missing.key");
        let msg = load(&cert, &missing).err().unwrap_or_default();
        assert!(msg.contains("missing.key") && msg.contains("No such file"), "{msg}");
        let key = write(&dir, "ok.key", &pkey.private_key_to_pem_pkcs8().expect("pem"), 0o600);
        let msg = load(&key, &key).err().unwrap_or_default();
        assert!(msg.contains("client certificate") && msg.contains("ok.key"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn key_permissions_follow_libpq() {
        // Owned by the user: 0600 or less.
        for ok in [0o100600, 0o100400, 0o100700] {
            assert_eq!(key_permission_problem(1000, ok), None, "{ok:o}");
        }
        for bad in [0o100640, 0o100604, 0o100644, 0o100660, 0o100606] {
            let msg = key_permission_problem(1000, bad).unwrap_or_default();
            assert!(msg.contains("chmod 600"), "{bad:o}: {msg}");
        }
        // Owned by root: 0640 or less.
        for ok in [0o100600, 0o100640, 0o100440] {
            assert_eq!(key_permission_problem(0, ok), None, "{ok:o}");
        }
        for bad in [0o100644, 0o100660, 0o100604, 0o100650] {
            assert!(key_permission_problem(0, bad).is_some(), "{bad:o}");
        }
    }
}
