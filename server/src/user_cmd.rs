//! `drover user add|passwd|list|rm`: the dashboard's users, on the server host (against its
//! database, as `drover token create`). A password is read from stdin with
//! `--password-stdin`; otherwise one is generated, printed once, and must be changed at the
//! first login.

use std::io::BufRead;
use std::path::PathBuf;

use clap::Subcommand;

use crate::serve::auth::users::{check_password, check_user_name, generate_password};
use crate::serve::db::{Db, DbError};
use crate::serve::{cli_database_url, runtime};

/// Where the server's database is (as for `drover token create`).
#[derive(Debug, clap::Args)]
pub(crate) struct DbArgs {
    /// The server's config file, for its database.
    #[arg(long, env = "DROVER_CONFIG")]
    config: Option<PathBuf>,
    /// The server's database, if not the data directory's SQLite file.
    #[arg(long, env = "DROVER_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Add a dashboard user (a generated password is printed and must be changed at the first
    /// login).
    Add {
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Set a user's password (their sessions end).
    Passwd {
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the users.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove a user (their sessions end).
    Rm {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// The password: stdin's first line, or a generated one (`true`: generated).
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((generate_password(), true));
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    check_password(&p).map_err(anyhow::Error::msg)?;
    Ok((p, false))
}

fn db_of(db: &DbArgs, data_dir: Option<PathBuf>) -> anyhow::Result<String> {
    cli_database_url(data_dir, db.config.as_deref(), db.database_url.clone())
}

pub(crate) fn run(cmd: UserCommand, data_dir: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        UserCommand::Add {
            name,
            password_stdin,
            db,
        } => {
            check_user_name(&name).map_err(anyhow::Error::msg)?;
            let (pw, generated) = password(password_stdin)?;
            let url = db_of(&db, data_dir)?;
            rt.block_on(async {
                let db = Db::open(&url).await?;
                db.users()
                    .add_user(&name, &pw, generated)
                    .await
                    .map_err(err)?;
                db.audit("cli", "user.add", &name).await?;
                say(json, &name, generated.then_some(pw.as_str()), "added");
                Ok(())
            })
        }
        UserCommand::Passwd {
            name,
            password_stdin,
            db,
        } => {
            let (pw, generated) = password(password_stdin)?;
            let url = db_of(&db, data_dir)?;
            rt.block_on(async {
                let db = Db::open(&url).await?;
                db.users()
                    .set_password(&name, &pw, generated, None)
                    .await
                    .map_err(err)?;
                db.audit("cli", "user.password", &name).await?;
                say(
                    json,
                    &name,
                    generated.then_some(pw.as_str()),
                    "password set",
                );
                Ok(())
            })
        }
        UserCommand::List { db } => {
            let url = db_of(&db, data_dir)?;
            rt.block_on(async {
                let users = Db::open(&url).await?.users().users().await?;
                if json {
                    println!("{}", serde_json::to_value(&users)?);
                } else {
                    for u in users {
                        let note = if u.must_change {
                            "  (password to change at the next login)"
                        } else {
                            ""
                        };
                        println!("{}{note}", u.name);
                    }
                }
                Ok(())
            })
        }
        UserCommand::Rm { name, db } => {
            let url = db_of(&db, data_dir)?;
            rt.block_on(async {
                let db = Db::open(&url).await?;
                db.users().remove_user(&name).await.map_err(err)?;
                db.audit("cli", "user.remove", &name).await?;
                if json {
                    println!("{}", serde_json::json!({ "removed": name }));
                } else {
                    println!("user {name} removed");
                }
                Ok(())
            })
        }
    }
}

fn err(e: DbError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn say(json: bool, name: &str, generated: Option<&str>, what: &str) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "user": name, "password": generated, "must_change": generated.is_some() })
        );
    } else if let Some(p) = generated {
        println!("user {name} {what}; one-time password: {p}");
        println!("(to be changed at the first login)");
    } else {
        println!("user {name} {what}");
    }
}
