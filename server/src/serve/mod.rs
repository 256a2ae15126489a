//! `drover serve`: the daemon. It keeps the inventory (machines, groups, API tokens, an audit
//! log) in its database, serves the image store of its data directory, and answers the HTTP
//! API. Runs with no config file: `./drover-data`, an embedded SQLite database, port 8080.
//!
//! Organised by feature, each folder with its handlers, its rules and its queries:
//! [`deployments`] give machines tasks that their agents carry out over multicast (a session
//! per deployment, run on a thread of its own), a BitTorrent swarm ([`swarm`]: the tracker and
//! the server's seed) or unicast, and take captures; they survive a restart. [`schedules`]
//! redeploy or wake machines at cron or one-shot times, once across every server sharing the
//! database. [`boot`] brings machines up: proxy or full DHCP, TFTP, the per-machine iPXE
//! scripts, wake-on-LAN out of the lab interface (`--iface`). [`auth`] says who asks (users,
//! tokens, the caller's address), [`web`] is the API's router, its OpenAPI document and the
//! dashboard's mount. [`db`] holds the connection, the migrations and the inventory
//! (machines, groups, the audit log).

pub(crate) mod auth;
pub(crate) mod boot;
pub(crate) mod config;
pub(crate) mod db;
pub(crate) mod deployments;
pub(crate) mod inventory;
pub(crate) mod schedules;
pub(crate) mod servers;
pub(crate) mod store;
pub(crate) mod swarm;
pub(crate) mod tasks;
pub(crate) mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use config::{Config, Settings};
use db::Db;

/// `drover serve` flags; each overrides the config file.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML config file (see deploy/drover.example.toml): the same settings as the flags,
    /// which win over it.
    #[arg(long, env = "DROVER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

/// `drover token ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Create an API token and print it (run on the server host, against its data directory).
    Create {
        /// A name for the token (who or what uses it).
        name: String,
        /// The server's config file, for its database.
        #[arg(long, env = "DROVER_CONFIG")]
        config: Option<PathBuf>,
        /// The server's database, if not the data directory's SQLite file.
        #[arg(long, env = "DROVER_DATABASE_URL")]
        database_url: Option<String>,
    },
}

/// The server's database for a command run on its host: `--database-url`, else the config
/// file's, else the data directory's SQLite file (the directory made if need be).
pub(crate) fn cli_database_url(
    data_dir: Option<PathBuf>,
    config: Option<&Path>,
    database_url: Option<String>,
) -> anyhow::Result<String> {
    let file = load_file(config)?;
    let data_dir = data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_DATA_DIR));
    let url = database_url
        .or(file.database_url)
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("drover.db").display()));
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    }
    Ok(url)
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn load_file(path: Option<&Path>) -> anyhow::Result<Settings> {
    path.map_or_else(|| Ok(Settings::default()), Settings::load)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub(crate) fn serve(args: ServeArgs, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let flags = Settings {
        data_dir,
        ..args.settings
    };
    let cfg = Config::resolve(flags.over(load_file(args.config.as_deref())?))?;
    runtime()?.block_on(run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating the data directory {}", cfg.data_dir.display()))?;
    let store = {
        let (spec, default) = (cfg.store.clone(), cfg.data_dir.join("images"));
        let what = spec
            .as_deref()
            .map_or_else(|| default.display().to_string(), stores::redact);
        let opts = cfg.store_options.clone();
        tokio::task::spawn_blocking(move || stores::open(spec.as_deref(), &default, &opts))
            .await?
            .with_context(|| format!("opening the image store {what}"))?
    };
    // The certificate is read first: a bad one stops the start before anything listens.
    let tls_acceptor = match &cfg.tls {
        Some(t) => Some(auth::tls::acceptor(&t.cert, &t.key)?),
        None => None,
    };
    let db = Db::open(&cfg.database_url).await?;
    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("listening on {}", cfg.http))?;
    let addr = listener.local_addr()?;
    let owner = server_id(&cfg.data_dir)?;
    let tracker = Arc::new(swarm::tracker::Tracker::default());
    tracker.load(&swarm::torrent::cache_dir(&cfg.data_dir));
    let seeder = swarm::seeder::Seeder::new(
        tracker.clone(),
        &cfg.public_url,
        addr,
        cfg.bittorrent.0,
        cfg.bittorrent.1,
        cfg.bittorrent_upload_rate.map(|bits| bits / 8),
        cfg.bittorrent_server_peers,
        &cfg.data_dir,
        store.clone(),
    );
    let tasks = tasks::Tasks::default();
    let deployer = deployments::service::Deployer::new(
        tasks.clone(),
        db.clone(),
        store.clone(),
        cfg.data_dir.clone(),
        cfg.iface.clone(),
        cfg.multicast_rate,
        cfg.multicast_window,
        owner,
        seeder.clone(),
        deployments::service::AgentSwarm {
            upload_bps: cfg.bittorrent_agent_upload_rate,
            peers: cfg.bittorrent_agent_peers,
        },
    );
    let scheduler = schedules::service::Scheduler::new(schedules::api::settings(
        cfg.wake_lead,
        cfg.schedule_grace,
    ));
    let waker = Arc::new(boot::wol::Waker::new(
        db.clone(),
        cfg.iface.clone(),
        cfg.wol_port,
    ));
    let host = Arc::new(schedules::api::ServerHost {
        db: db.clone(),
        deployer: deployer.clone(),
        waker: waker.clone(),
    });
    let (settings, changed) = (scheduler.settings, scheduler.signal());
    tasks.spawn(tracing::info_span!("scheduler"), async move {
        schedules::service::run(host, settings, changed).await;
        Ok(())
    });
    let inventory = inventory::service::Inventory::new(
        db.clone(),
        match (&cfg.dhcp_pool, &cfg.iface) {
            (Some(p), Some(i)) if cfg.dhcp == "full" => Some((p.clone(), i.addr)),
            _ => None,
        },
    );
    let inventory_changed = inventory.changed();
    let state = Arc::new(web::api::AppState {
        db: db.clone(),
        started: Instant::now(),
        inventory,
        images: store::service::Images::new(store.clone()),
        deployer: deployer.clone(),
        scheduler,
        boot: boot::ipxe::BootEnv {
            dir: cfg.boot_dir.clone(),
            public_url: cfg.public_url.clone(),
            args: cfg.boot_args.clone(),
            register_unknown: cfg.register_unknown,
        },
        waker,
        tracker,
        lab_addr: cfg.iface.as_ref().map(|i| i.addr),
        agent_networks: cfg.agent_networks.clone(),
    });
    eprintln!("drover serve: listening on http://{addr}");
    eprintln!("  public URL  {}", cfg.public_url);
    eprintln!("  data        {}", cfg.data_dir.display());
    eprintln!(
        "  store       {}{}",
        store.location(),
        if store.encrypted() {
            " (encrypted)"
        } else {
            ""
        }
    );
    eprintln!("  database    {}", db::redact(&cfg.database_url));
    match (&cfg.iface, &cfg.iface_problem) {
        (Some(i), _) => eprintln!("  interface   {} ({}/{})", i.name, i.addr, i.prefix),
        (None, why) => eprintln!(
            "  interface   none ({}): multicast and wake-on-LAN are off until --iface names one",
            why.as_deref().unwrap_or("not found")
        ),
    }
    match cfg.dhcp.as_str() {
        "proxy" => {
            let iface = cfg
                .iface
                .clone()
                .context("--dhcp proxy answers on the lab interface: give it with --iface")?;
            eprintln!(
                "  dhcp        proxy on {} (ports 67, 4011); UEFI x64 machines start {}",
                iface.name,
                loader_text(&cfg)
            );
            if cfg.uefi_loader == pxe::dhcp::UefiLoader::Shim {
                eprintln!(
                    "              (GRUB finds this server from the lab DHCP server's answer: it \
                     must name {} as next server, option 66/siaddr)",
                    iface.addr
                );
            }
            let boot = boot_config(&cfg, &iface);
            // Bound now, so ports held by another DHCP server are an error at start.
            let task = boot::dhcp::proxy(
                boot::dhcp::bind(iface)?,
                boot,
                db.clone(),
                inventory_changed.clone(),
            );
            tasks.spawn(tracing::info_span!("dhcp", mode = "proxy"), task);
        }
        "full" => {
            let iface = cfg
                .iface
                .clone()
                .context("--dhcp full serves the lab interface: give it with --iface")?;
            let pool = cfg
                .dhcp_pool
                .clone()
                .context("--dhcp full needs --dhcp-range FIRST-LAST")?;
            eprintln!(
                "  dhcp        full on {}: {}-{}; UEFI x64 machines start {}",
                iface.name,
                pool.first,
                pool.last,
                loader_text(&cfg)
            );
            let server = pxe::dhcp_full::Server::new(pool, boot_config(&cfg, &iface))
                .map_err(anyhow::Error::msg)?;
            let sock = boot::dhcp::bind_full(&iface)?;
            let task = boot::dhcp::full(sock, iface, server, db.clone(), inventory_changed.clone());
            tasks.spawn(tracing::info_span!("dhcp", mode = "full"), task);
        }
        _ => eprintln!("  dhcp        off"),
    }
    match cfg.tftp {
        Some(bind) => {
            std::fs::create_dir_all(&cfg.boot_dir).with_context(|| {
                format!("creating the boot directory {}", cfg.boot_dir.display())
            })?;
            let sock = tokio::net::UdpSocket::bind(bind)
                .await
                .with_context(|| format!("TFTP: binding {bind}"))?;
            eprintln!(
                "  tftp        {} ({}): {}",
                sock.local_addr()?,
                cfg.boot_dir.display(),
                boot::tftp::first_stages(&cfg.boot_dir)
            );
            tasks.spawn(
                tracing::info_span!("tftp"),
                boot::tftp::serve(sock, cfg.boot_dir.clone(), state.clone()),
            );
        }
        None => eprintln!("  tftp        off"),
    }
    // Deployments that were running when the server stopped go on.
    tasks.spawn(
        tracing::info_span!("servers"),
        servers::beat(db.clone(), deployer.owner.clone(), cfg.public_url.clone()),
    );
    let resumer = deployer.clone();
    tasks.spawn(tracing::info_span!("deployments"), async move {
        resumer.seeder.resume().await;
        resumer.resume().await?;
        resumer.follow().await
    });
    web::ui::first_admin(&db).await?;
    let api = web::api::router(state);
    let control = web::ui::Control {
        db: db.clone(),
        api: api.clone(),
    };
    let dashboard = web_ui::router(control.clone(), web_ui::Options::default());
    eprintln!("  dashboard   {}/", cfg.public_url);
    if let (Some(t), Some(acceptor)) = (&cfg.tls, tls_acceptor) {
        let https = tokio::net::TcpListener::bind(t.https)
            .await
            .with_context(|| format!("HTTPS: listening on {}", t.https))?;
        eprintln!(
            "  https       {} (the dashboard and the API; {})",
            https.local_addr()?,
            t.cert.display()
        );
        let secure = api.clone().merge(web_ui::router(
            control,
            web_ui::Options {
                secure_cookies: true,
            },
        ));
        let stop = tasks.cancelled();
        tasks.spawn(tracing::info_span!("https"), async move {
            auth::tls::serve(https, acceptor, secure, stop).await;
            Ok(())
        });
    }
    axum::serve(
        listener,
        api.merge(dashboard)
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .context("serving HTTP")?;
    if !tasks.shutdown(std::time::Duration::from_secs(10)).await {
        tracing::warn!("some background tasks did not stop within 10 s");
    }
    // Gone at once for the other servers: its machines' next deployments run elsewhere.
    if let Err(e) = db.servers().leave(&deployer.owner).await {
        tracing::warn!(error = %e, "could not tell the database this server stopped");
    }
    eprintln!("drover serve: stopped");
    Ok(())
}

/// What DHCP hands PXE clients on `iface`.
fn boot_config(cfg: &Config, iface: &transport::net::Iface) -> pxe::dhcp::BootConfig {
    let mut b = pxe::dhcp::BootConfig::new(iface.addr, cfg.public_url.clone());
    b.uefi_loader = cfg.uefi_loader;
    b
}

/// The banner's words for what UEFI machines start, with what is missing for it.
fn loader_text(cfg: &Config) -> String {
    let (what, files): (&str, &[&str]) = match cfg.uefi_loader {
        pxe::dhcp::UefiLoader::Shim => (
            "the Secure Boot chain (shimx64.efi, grubx64.efi)",
            &["shimx64.efi", "grubx64.efi"],
        ),
        pxe::dhcp::UefiLoader::Ipxe => ("iPXE (snponly.efi; Secure Boot off)", &["snponly.efi"]),
    };
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !cfg.boot_dir.join(f).is_file())
        .collect();
    let http_boot = "UEFI HTTP Boot clients get iPXE's URL";
    if missing.is_empty() {
        format!("{what}; groups may choose otherwise; {http_boot}")
    } else {
        format!(
            "{what}, but {} missing: run deploy/build-boot-env; {http_boot}",
            missing.join(" and ")
        )
    }
}

/// This server's identity, kept in its data directory: deployments record which server runs
/// their multicast session (several servers may share a PostgreSQL inventory).
fn server_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("server-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = transport::hex(&rand::random::<[u8; 8]>());
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `drover token create`.
pub(crate) fn token(
    cmd: TokenCommand,
    data_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let TokenCommand::Create {
        name,
        config,
        database_url,
    } = cmd;
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 64 && !name.chars().any(char::is_control),
        "token name {name:?}: 1 to 64 printable characters"
    );
    let url = cli_database_url(data_dir, config.as_deref(), database_url)?;
    runtime()?.block_on(async {
        let db = Db::open(&url).await?;
        let token = db.create_token(&name).await.map_err(anyhow::Error::from)?;
        db.audit("cli", "token.create", &name).await?;
        if json {
            println!("{}", serde_json::json!({ "name": name, "token": token }));
        } else {
            println!("{token}");
        }
        Ok(())
    })
}
