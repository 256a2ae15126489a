//! drover's image stores, chosen by a `--store` value: a directory (the default: a local disk,
//! or an NFS/SMB share mounted as one), `s3://BUCKET/PREFIX` (any S3-compatible service),
//! `webdav://HOST[:PORT]/PATH` (`webdavs://` for HTTPS) or `sftp://[USER@]HOST[:PORT]/PATH`.
//!
//! The object stores are reached through OpenDAL and adapted to `imaging`'s synchronous
//! [`Backend`] trait on a small tokio runtime of their own ([`object`]), so the imaging
//! pipelines run unchanged on every store. A value with a scheme drover does not serve is an
//! error naming it, never a directory called `s3:`.
//!
//! What this crate does not do: chunk formats, manifests, locking and gc live in
//! `imaging::store`; encryption and caching wrap a store there too.

pub mod object;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use imaging::store::{Backend, Secret, Store, StoreError};

/// The schemes drover serves, for messages.
pub const SCHEMES: &str = "s3://, webdav://, webdavs://, sftp:// or a directory";

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A URL whose scheme drover does not serve.
    #[error(
        "drover does not serve stores of scheme {scheme:?} (in {spec:?}): give {SCHEMES}; \
         NFS and SMB shares are mounted and given as their directory"
    )]
    UnknownScheme {
        /// The scheme.
        scheme: String,
        /// The whole value.
        spec: String,
    },
    /// A value that looks like a URL missing its `//`.
    #[error(
        "{spec:?} looks like a URL without \"//\": write {scheme}://..., or ./{spec} for a \
         directory of that name"
    )]
    NotAUrl {
        /// The scheme-like prefix.
        scheme: String,
        /// The whole value.
        spec: String,
    },
    /// A URL that is missing a part.
    #[error("store URL {spec:?}: {why}")]
    BadUrl {
        /// The whole value (credentials removed).
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// The service would not build from the settings.
    #[error("store {location} is not set up right")]
    Config {
        /// The store.
        location: String,
        /// OpenDAL's complaint.
        #[source]
        source: opendal::Error,
    },
    /// The store did not answer a first listing.
    #[error("store {location} cannot be read")]
    Unreachable {
        /// The store.
        location: String,
        /// The failure.
        #[source]
        source: imaging::store::BackendError,
    },
    /// The directory store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings of the object stores beyond the URL. Unset fields are taken from the environment
/// by [`Options::with_env`]: `AWS_ENDPOINT_URL`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; `DROVER_WEBDAV_USER`,
/// `DROVER_WEBDAV_PASSWORD`; `DROVER_SFTP_KEY`, `DROVER_SFTP_KNOWN_HOSTS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The S3 service's URL (`http://127.0.0.1:8333`); AWS itself when unset.
    pub s3_endpoint: Option<String>,
    /// The S3 region (`us-east-1` when unset).
    pub s3_region: Option<String>,
    /// The S3 access key id.
    pub s3_access_key_id: Option<String>,
    /// The S3 secret key.
    pub s3_secret_access_key: Option<String>,
    /// An S3 session token.
    pub s3_session_token: Option<String>,
    /// WebDAV user (also from the URL's `user@`).
    pub webdav_user: Option<String>,
    /// WebDAV password (also from the URL's `user:password@`).
    pub webdav_password: Option<String>,
    /// The SSH private key for SFTP (ssh's own defaults when unset).
    pub sftp_key: Option<PathBuf>,
    /// How SFTP checks the server's host key: `strict` (the default: it must be in
    /// known_hosts), `add` (trust on first use) or `accept` (any).
    pub sftp_known_hosts: Option<String>,
    /// The key of an encrypted store (a new, empty store given one becomes encrypted).
    pub secret: Option<Secret>,
    /// A local cache of an object store's chunks (the server's): its directory and size.
    pub cache: Option<(PathBuf, u64)>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Options {
    /// These options, with every unset field taken from its environment variable.
    pub fn with_env(self) -> Self {
        Self {
            s3_endpoint: self.s3_endpoint.or_else(|| env("AWS_ENDPOINT_URL")),
            s3_region: self
                .s3_region
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION")),
            s3_access_key_id: self.s3_access_key_id.or_else(|| env("AWS_ACCESS_KEY_ID")),
            s3_secret_access_key: self
                .s3_secret_access_key
                .or_else(|| env("AWS_SECRET_ACCESS_KEY")),
            s3_session_token: self.s3_session_token.or_else(|| env("AWS_SESSION_TOKEN")),
            webdav_user: self.webdav_user.or_else(|| env("DROVER_WEBDAV_USER")),
            webdav_password: self
                .webdav_password
                .or_else(|| env("DROVER_WEBDAV_PASSWORD")),
            sftp_key: self
                .sftp_key
                .or_else(|| env("DROVER_SFTP_KEY").map(PathBuf::from)),
            sftp_known_hosts: self
                .sftp_known_hosts
                .or_else(|| env("DROVER_SFTP_KNOWN_HOSTS")),
            secret: self.secret,
            cache: self.cache,
        }
    }
}

/// What a `--store` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A directory on this machine.
    Dir(PathBuf),
    /// An S3 bucket and a key prefix inside it.
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix (no leading or trailing `/`; empty for the bucket's root).
        prefix: String,
    },
    /// A WebDAV folder.
    WebDav {
        /// HTTPS (`webdavs://`).
        https: bool,
        /// `HOST[:PORT]`.
        host: String,
        /// The folder (starting with `/`).
        path: String,
        /// From the URL's `user@`.
        user: Option<String>,
        /// From the URL's `user:password@`.
        password: Option<String>,
    },
    /// A folder over SFTP.
    Sftp {
        /// From the URL's `user@`.
        user: Option<String>,
        /// `HOST[:PORT]`.
        host: String,
        /// The folder (absolute, or relative to the user's home when it starts with `/~/`).
        path: String,
    },
}

fn is_scheme(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '+' | '-' | '.'))
}

/// `%XX` escapes decoded (for user names and passwords in URLs).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a `--store` value.
pub fn parse(spec: &str) -> Result<Target, OpenError> {
    let Some((scheme, rest)) = spec.split_once("://") else {
        if let Some((head, _)) = spec.split_once(':') {
            if is_scheme(head) && head.len() > 1 {
                return Err(OpenError::NotAUrl {
                    scheme: head.to_string(),
                    spec: spec.to_string(),
                });
            }
        }
        return Ok(Target::Dir(PathBuf::from(spec)));
    };
    let bad = |why: &str| OpenError::BadUrl {
        spec: redact(spec),
        why: why.to_string(),
    };
    let lower = scheme.to_ascii_lowercase();
    if !is_scheme(scheme) {
        return Err(bad("the part before :// is not a scheme"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (Some(percent_decode(u)), Some(percent_decode(p))),
            None => (Some(percent_decode(u)), None),
        },
        None => (None, None),
    };
    match lower.as_str() {
        "file" => Ok(Target::Dir(PathBuf::from(path))),
        "s3" => {
            if host.is_empty() {
                return Err(bad("no bucket: write s3://BUCKET/PREFIX"));
            }
            if userinfo.is_some() {
                return Err(bad(
                    "S3 keys do not go in the URL: use AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or the server's config",
                ));
            }
            Ok(Target::S3 {
                bucket: host.to_string(),
                prefix: path.trim_matches('/').to_string(),
            })
        }
        "webdav" | "webdavs" => {
            if host.is_empty() {
                return Err(bad("no host: write webdav://HOST[:PORT]/PATH"));
            }
            Ok(Target::WebDav {
                https: lower == "webdavs",
                host: host.to_string(),
                path: if path.is_empty() { "/" } else { path }.to_string(),
                user,
                password,
            })
        }
        "sftp" => {
            if host.is_empty() {
                return Err(bad("no host: write sftp://[USER@]HOST[:PORT]/PATH"));
            }
            if password.is_some() {
                return Err(bad(
                    "SFTP passwords are not supported: use an SSH key (DROVER_SFTP_KEY)",
                ));
            }
            Ok(Target::Sftp {
                user,
                host: host.to_string(),
                path: if path.is_empty() { "/" } else { path }.to_string(),
            })
        }
        _ => Err(OpenError::UnknownScheme {
            scheme: scheme.to_string(),
            spec: redact(spec),
        }),
    }
}

/// `spec` with any password in it replaced by `***`.
pub fn redact(spec: &str) -> String {
    let Some((scheme, rest)) = spec.split_once("://") else {
        return spec.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{}", &rest[end..])
        }
        None => spec.to_string(),
    }
}

/// Opens the store `spec` names; `None` is the directory `default_dir`. An object store is
/// listed once, so a wrong endpoint, bucket or key fails here, naming the store.
pub fn open(spec: Option<&str>, default_dir: &Path, opts: &Options) -> Result<Store, OpenError> {
    let target = match spec {
        Some(s) => parse(s)?,
        None => Target::Dir(default_dir.to_owned()),
    };
    let mut backend: Arc<dyn Backend> = match target {
        Target::Dir(dir) => return Ok(Store::open(&dir)?.unlock(opts.secret.as_ref())?),
        t => Arc::new(object::ObjectBackend::new(&t, opts)?),
    };
    if let Some((dir, bytes)) = &opts.cache {
        let location = backend.location();
        backend = Arc::new(
            imaging::store::cache::Cached::new(backend, dir, *bytes)
                .map_err(|source| OpenError::Unreachable { location, source })?,
        );
    }
    if let Err(source) = backend.list("manifests/") {
        return Err(OpenError::Unreachable {
            location: backend.location(),
            source,
        });
    }
    Ok(Store::with_backend(backend).unlock(opts.secret.as_ref())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_name_directories_or_known_urls() {
        assert_eq!(
            parse("/srv/images").unwrap(),
            Target::Dir("/srv/images".into())
        );
        assert_eq!(parse("./s3:x").unwrap(), Target::Dir("./s3:x".into()));
        assert_eq!(
            parse("file:///srv/i").unwrap(),
            Target::Dir("/srv/i".into())
        );
        assert_eq!(
            parse("s3://bucket/a/b/").unwrap(),
            Target::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            parse("webdavs://u:p%40ss@dav.example:8443/images").unwrap(),
            Target::WebDav {
                https: true,
                host: "dav.example:8443".into(),
                path: "/images".into(),
                user: Some("u".into()),
                password: Some("p@ss".into()),
            }
        );
        assert_eq!(
            parse("sftp://drover@10.0.0.2:2222/srv/images").unwrap(),
            Target::Sftp {
                user: Some("drover".into()),
                host: "10.0.0.2:2222".into(),
                path: "/srv/images".into(),
            }
        );
    }

    #[test]
    fn unknown_schemes_and_half_urls_are_errors_naming_them() {
        let e = parse("gs://bucket/x").unwrap_err().to_string();
        assert!(e.contains("\"gs\"") && e.contains("s3://"), "{e}");
        let e = parse("s3:bucket").unwrap_err().to_string();
        assert!(e.contains("s3://"), "{e}");
        let e = parse("s3:///x").unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
        let e = parse("s3://key:secret@bucket/x").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        let e = parse("nfs://server/export").unwrap_err().to_string();
        assert!(e.contains("mounted"), "{e}");
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("webdav://me:hunter2@h/x"),
            "webdav://me:***@h/x".to_string()
        );
        assert_eq!(redact("sftp://me@h/x"), "sftp://me@h/x".to_string());
        assert_eq!(redact("/srv/x"), "/srv/x".to_string());
    }
}
