//! Store locks: shared while a capture or restore runs, exclusive for `gc`.
//!
//! A directory store uses `flock` on its `lock` file. An object store has no such thing, so each
//! holder writes a *lock object* (`locks/<host>-<pid>-<random>.json`: exclusive or shared, and
//! when it was last refreshed) and then lists the others: a shared holder backs off while an
//! exclusive lock is live, an exclusive one while any other is. A holder refreshes its object
//! every [`REFRESH`]; one not refreshed for [`STALE`] (a crashed server) is ignored, so a
//! crash blocks `gc` for minutes, never for ever. This is the scheme restic uses for the same
//! problem; servers' clocks must agree to within a minute (NTP).

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::backend::{Backend, BackendError};

/// How often a holder rewrites its lock object.
pub const REFRESH: Duration = Duration::from_secs(20);
/// A lock object older than this is a crashed holder's and is ignored.
pub const STALE: Duration = Duration::from_secs(90);

/// A lock on the store, held for the life of the value.
#[derive(Debug)]
pub struct StoreLock {
    _held: Held,
}

/// What is held; dropping it releases the lock.
#[derive(Debug)]
#[allow(dead_code)]
enum Held {
    File(File),
    Object(ObjectLock),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LockBody {
    exclusive: bool,
    host: String,
    pid: u32,
    /// Unix seconds of the last refresh.
    refreshed: u64,
}

type Stop = Arc<(Mutex<bool>, Condvar)>;

#[derive(Debug)]
struct ObjectLock {
    backend: Arc<dyn Backend>,
    /// The current lock object: each refresh writes a new one, then removes the old, so the
    /// lock is never absent and no backend has to overwrite an object in place.
    key: Arc<Mutex<String>>,
    stop: Stop,
    refresher: Option<JoinHandle<()>>,
}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.stop;
            *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let key = self.key.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Err(e) = self.backend.delete(&key) {
            tracing::warn!(error = %e, "could not remove the store's lock object");
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// `flock` on `file` (shared or exclusive), waiting for it.
pub(super) fn lock_file(file: File, exclusive: bool) -> std::io::Result<StoreLock> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on an fd we own; the lock dies with the file.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(StoreLock {
        _held: Held::File(file),
    })
}

/// Takes a lock object on `backend`, waiting while a conflicting live one exists.
pub(super) fn lock_objects(
    backend: Arc<dyn Backend>,
    exclusive: bool,
) -> Result<StoreLock, BackendError> {
    let host = host();
    let pid = std::process::id();
    let base = format!("locks/{host}-{pid}-{:016x}", random());
    let key = format!("{base}-0.json");
    let body = move |refreshed| {
        serde_json::to_vec(&LockBody {
            exclusive,
            host: host.clone(),
            pid,
            refreshed,
        })
        .unwrap_or_default()
    };
    let mut said = false;
    loop {
        backend.write(&key, &body(now_secs()))?;
        let blocker = conflicting(&*backend, &key, exclusive)?;
        let Some(blocker) = blocker else { break };
        backend.delete(&key)?;
        if !said {
            tracing::info!(
                store = %backend.location(),
                held_by = %blocker,
                "waiting for the store's lock"
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500 + random() % 1000));
    }
    let stop: Stop = Arc::new((Mutex::new(false), Condvar::new()));
    let key = Arc::new(Mutex::new(key));
    let refresher = {
        let (backend, key, stop) = (backend.clone(), key.clone(), stop.clone());
        let bytes = move || body(now_secs());
        let mut seq = 0u64;
        std::thread::Builder::new()
            .name("store-lock".into())
            .spawn(move || loop {
                let (m, cv) = &*stop;
                let g = m.lock().unwrap_or_else(|e| e.into_inner());
                let (g, _) = cv
                    .wait_timeout_while(g, REFRESH, |stopped| !*stopped)
                    .unwrap_or_else(|e| e.into_inner());
                if *g {
                    return;
                }
                drop(g);
                seq += 1;
                let next = format!("{base}-{seq}.json");
                match backend.write(&next, &bytes()) {
                    Ok(()) => {
                        let old = std::mem::replace(
                            &mut *key.lock().unwrap_or_else(|e| e.into_inner()),
                            next,
                        );
                        let _ = backend.delete(&old);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not refresh the store's lock object")
                    }
                }
            })
            .ok()
    };
    Ok(StoreLock {
        _held: Held::Object(ObjectLock {
            backend,
            key,
            stop,
            refresher,
        }),
    })
}

/// The first live lock object other than `mine` that conflicts with taking one (`exclusive`
/// or not), described for a message.
///
/// A holder refreshing its lock writes the new object before removing the old one, so a
/// listed object that is gone when read means a newer one exists that this listing missed:
/// the check lists again (and, should that keep happening, counts it as a conflict).
fn conflicting(
    backend: &dyn Backend,
    mine: &str,
    exclusive: bool,
) -> Result<Option<String>, BackendError> {
    'listing: for _ in 0..10 {
        let now = now_secs();
        for e in backend.list("locks/")? {
            if e.key == mine {
                continue;
            }
            let Some(bytes) = backend.read(&e.key)? else {
                continue 'listing;
            };
            let Ok(other) = serde_json::from_slice::<LockBody>(&bytes) else {
                tracing::warn!(lock = %e.key, "ignoring an unreadable lock object");
                continue;
            };
            if now.saturating_sub(other.refreshed) > STALE.as_secs() {
                continue;
            }
            if exclusive || other.exclusive {
                let kind = if other.exclusive {
                    "exclusive"
                } else {
                    "shared"
                };
                return Ok(Some(format!(
                    "{kind} lock of process {} on {}",
                    other.pid, other.host
                )));
            }
        }
        return Ok(None);
    }
    Ok(Some("a lock being refreshed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalDir;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn an_exclusive_lock_object_waits_for_shared_ones_and_ignores_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalDir::open(dir.path()).unwrap());
        // A crashed holder's lock, last refreshed long ago, blocks nothing.
        let stale = LockBody {
            exclusive: true,
            host: "gone".into(),
            pid: 1,
            refreshed: now_secs() - STALE.as_secs() - 10,
        };
        backend
            .write(
                "locks/gone-1-0-0.json",
                &serde_json::to_vec(&stale).unwrap(),
            )
            .unwrap();
        let shared = lock_objects(backend.clone(), false).unwrap();
        let also_shared = lock_objects(backend.clone(), false).unwrap();
        let got = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (backend, got) = (backend.clone(), got.clone());
            std::thread::spawn(move || {
                let l = lock_objects(backend, true).unwrap();
                got.store(true, Ordering::SeqCst);
                l
            })
        };
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !got.load(Ordering::SeqCst),
            "exclusive taken beside shared locks"
        );
        drop(shared);
        drop(also_shared);
        let exclusive = waiter.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
        // The holders' objects are gone; the exclusive one is there until dropped.
        let live: Vec<_> = backend.list("locks/").unwrap();
        assert_eq!(live.len(), 2, "{live:?}");
        drop(exclusive);
        assert_eq!(backend.list("locks/").unwrap().len(), 1);
    }
}
