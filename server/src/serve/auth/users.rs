//! The dashboard's users and their login sessions, in the server's database: passwords as
//! argon2id hashes (PHC strings), sessions by the BLAKE3 hash of their cookie, each with the
//! form token its pages' forms carry.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sqlx::Row;

use crate::serve::db::{is_unique_violation, now_ms, random_hex, Db, DbError};

/// How long a login lasts: a working day and a night.
pub(crate) const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// Shortest password accepted.
pub(crate) const MIN_PASSWORD: usize = 8;

/// A dashboard user.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct User {
    pub(crate) name: String,
    /// The password was generated (first run) and must be changed before anything else.
    pub(crate) must_change: bool,
    pub(crate) created_ms: i64,
}

/// A login session.
#[derive(Debug, Clone)]
pub(crate) struct WebSession {
    pub(crate) user: User,
    /// The token every form of the session carries.
    pub(crate) csrf: String,
}

/// User names: what an audit log line and a login form hold.
pub(crate) fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(format!(
            "user name {name:?}: 1 to 64 letters, digits and . _ - @"
        ));
    }
    Ok(())
}

pub(crate) fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(format!(
            "a password needs at least {MIN_PASSWORD} characters"
        ));
    }
    if password.len() > 1024 {
        return Err("a password has at most 1024 bytes".into());
    }
    Ok(())
}

/// [`hash_password`] off the async runtime's threads (argon2 takes tens of milliseconds).
async fn hash_password_blocking(password: &str) -> anyhow::Result<String> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || hash_password(&password)).await?
}

fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .and_then(|h| Argon2::default().verify_password(password.as_bytes(), &h))
        .is_ok()
}

/// A password for a user nobody chose one for: 20 characters of an unambiguous alphabet.
pub(crate) fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn user(r: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        name: r.try_get("name")?,
        must_change: r.try_get::<i64, _>("must_change")? != 0,
        created_ms: r.try_get("created_ms")?,
    })
}

/// The users' and web sessions' queries, through the server's database handle.
pub(crate) struct Users<'a> {
    db: &'a Db,
}

impl Db {
    /// The users' and web sessions' queries.
    pub(crate) fn users(&self) -> Users<'_> {
        Users { db: self }
    }
}

impl Users<'_> {
    /// Adds a user; `must_change` when the password was generated for them.
    pub(crate) async fn add_user(
        &self,
        name: &str,
        password: &str,
        must_change: bool,
    ) -> Result<User, DbError> {
        let hash = hash_password_blocking(password).await?;
        let u = User {
            name: name.to_string(),
            must_change,
            created_ms: now_ms(),
        };
        let r = sqlx::query(
            "INSERT INTO users (name, password_hash, must_change, created_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&u.name)
        .bind(hash)
        .bind(i64::from(must_change))
        .bind(u.created_ms)
        .execute(&self.db.pool)
        .await;
        match r {
            Ok(_) => Ok(u),
            Err(e) if is_unique_violation(&e) => Err(DbError::Exists(format!("user {name:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Every user, by name.
    pub(crate) async fn users(&self) -> anyhow::Result<Vec<User>> {
        let rows = sqlx::query("SELECT name, must_change, created_ms FROM users ORDER BY name")
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows.iter().map(user).collect::<Result<_, _>>()?)
    }

    /// Sets a user's password (`must_change`: a generated one) and ends their sessions but
    /// `keep_session`.
    pub(crate) async fn set_password(
        &self,
        name: &str,
        password: &str,
        must_change: bool,
        keep_session: Option<&str>,
    ) -> Result<(), DbError> {
        let hash = hash_password_blocking(password).await?;
        let mut tx = self.db.begin_write().await?;
        let n =
            sqlx::query("UPDATE users SET password_hash = $1, must_change = $2 WHERE name = $3")
                .bind(hash)
                .bind(i64::from(must_change))
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if n == 0 {
            return Err(DbError::NotFound(format!("user {name:?}")));
        }
        sqlx::query("DELETE FROM web_sessions WHERE user_name = $1 AND id_hash <> $2")
            .bind(name)
            .bind(keep_session.map(session_hash).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a user and their sessions.
    pub(crate) async fn remove_user(&self, name: &str) -> Result<(), DbError> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM web_sessions WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(DbError::NotFound(format!("user {name:?}")));
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user, if `password` is theirs. Unknown users cost a hash too (no timing tell).
    pub(crate) async fn check_login(
        &self,
        name: &str,
        password: &str,
    ) -> anyhow::Result<Option<User>> {
        let row = sqlx::query(
            "SELECT name, password_hash, must_change, created_ms FROM users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.db.pool)
        .await?;
        let (stored, u) = match &row {
            Some(r) => (r.try_get::<String, _>("password_hash")?, Some(user(r)?)),
            None => (DUMMY_HASH.to_string(), None),
        };
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &stored)).await?;
        Ok(u.filter(|_| ok))
    }

    /// Opens a session for `user`: returns the cookie value (shown once, stored hashed).
    pub(crate) async fn open_session(&self, user: &User) -> anyhow::Result<(String, WebSession)> {
        let cookie = random_hex(32);
        let csrf = random_hex(32);
        let now = now_ms();
        // Sessions long over go as new ones come.
        sqlx::query("DELETE FROM web_sessions WHERE expires_ms < $1")
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, user_name, csrf, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(session_hash(&cookie))
        .bind(&user.name)
        .bind(&csrf)
        .bind(now)
        .bind(now + SESSION_TTL_MS)
        .execute(&self.db.pool)
        .await?;
        Ok((
            cookie,
            WebSession {
                user: user.clone(),
                csrf,
            },
        ))
    }

    /// The session whose cookie is `cookie`, if it is open.
    pub(crate) async fn web_session(&self, cookie: &str) -> anyhow::Result<Option<WebSession>> {
        let row = sqlx::query(
            "SELECT u.name, u.must_change, u.created_ms, s.csrf FROM web_sessions s \
             JOIN users u ON u.name = s.user_name WHERE s.id_hash = $1 AND s.expires_ms > $2",
        )
        .bind(session_hash(cookie))
        .bind(now_ms())
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|r| {
            Ok(WebSession {
                user: user(&r)?,
                csrf: r.try_get("csrf")?,
            })
        })
        .transpose()
    }

    /// Ends the session whose cookie is `cookie`.
    pub(crate) async fn close_session(&self, cookie: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
            .bind(session_hash(cookie))
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}

fn session_hash(cookie: &str) -> String {
    blake3::hash(cookie.as_bytes()).to_hex().to_string()
}

/// An argon2id hash of a password nobody has, verified against when the user is unknown.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2hMt3mfhQl2pDbwVXj9BCyvrHIzKkTxhHAzaU8YFqQE";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        // The dummy parses (so an unknown user costs a whole hash) and matches nothing typed.
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password("", DUMMY_HASH));
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_user_name("alice").is_ok());
        assert!(check_user_name("a.b-c_d@lab").is_ok());
        for bad in ["", "a b", "x\n", &"a".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        let p = generate_password();
        assert_eq!(p.len(), 20);
        assert!(check_password(&p).is_ok());
    }
}
