//! Start-up and shutdown: open the store, load keys, build services, bind, serve.

use std::{future::IntoFuture, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    accounts::Accounts,
    api::{self, Services},
    backup::Backups,
    config::Config,
    e2ee::E2ee,
    ratelimit::RateLimiter,
    rooms::{RoomSettings, Rooms, notify::PushRulesCache},
    server_keys::ServerKeys,
    store::Store,
    sync::{Sync, presence::Presence, stream::Streams, typing::Typing},
    tls::{ClientAddr, TlsListener},
    user_data::UserData,
};

/// Builds every service from the configuration (migrations and key generation included).
pub async fn build(config: Config) -> anyhow::Result<Arc<Services>> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    }
    let store = Store::open(&config.database_url()).await.context("cannot open the database")?;
    let keys = Arc::new(ServerKeys::load_or_generate(&store).await.context("cannot load the signing key")?);
    let (max_pos, max_group) = store.max_ids().await?;
    let streams = Streams::new(max_pos);
    let config = Arc::new(config);
    let server_name = ruma::ServerName::parse(&config.server_name)?;
    let push_rules = Arc::new(PushRulesCache::default());
    let settings = RoomSettings {
        server_name,
        default_version: config.default_room_version.clone(),
        encryption_mandatory: config.encryption_mandatory,
        ephemeral_messages: config.ephemeral_messages,
        history: config.retention.history_policy(),
    };
    let federation = Arc::new(
        crate::federation::Federation::new(settings.server_name.clone(), keys.clone(), config.clone(), store.clone())
            .context("cannot set up federation")?,
    );
    let rooms = Arc::new(Rooms::new(store.clone(), streams.clone(), keys, push_rules.clone(), settings, max_group));
    rooms.load_erased().await.context("cannot load erased users")?;
    rooms.load_outlier_floor().await.context("cannot read stream positions")?;
    rooms.spawn_expiry();
    let sender = crate::federation::sender::Sender::new(federation.clone());
    federation.set_sender(sender.clone());
    let signer = federation.clone();
    rooms.on_remote_invite(Arc::new(move |invite| {
        let signer = signer.clone();
        Box::pin(async move { signer.countersign_invite(invite).await })
    }));
    let waker = sender.clone();
    rooms.on_outbox(Arc::new(move |destinations| waker.wake(destinations)));
    sender.resume().await;
    federation.spawn_device_list_updates(streams.clone());
    federation.resume_state_completions(&rooms).await.context("cannot resume partial-state joins")?;
    let typing = Typing::new(streams.clone());
    let presence = Presence::new(config.presence, streams.clone());
    let e2ee = Arc::new(E2ee::new(store.clone(), streams.clone(), federation.clone()));
    let accounts = Arc::new(Accounts::new(store.clone(), streams.clone(), config.clone()));
    let mut lifecycle = config.lifecycle.clone();
    // A retention preset's inactivity rule (Tchap: 6 months) and profile retention after
    // deactivation (Tchap: 36 months, Luxchat4Gov: none) unless the operator set them.
    let retention = config.retention.effective();
    if lifecycle.deactivate_inactive_after_secs.is_none() {
        lifecycle.deactivate_inactive_after_secs = retention.inactive_deactivation_days.map(|days| days * 86_400);
    }
    if lifecycle.deletion_after_secs.is_none() {
        lifecycle.deletion_after_secs = retention.profile_after_deactivation_days.map(|days| days * 86_400);
    }
    let sso = Arc::new(
        crate::identity::Sso::new(config.clone(), store.clone()).await.context("cannot set up single sign-on")?,
    );
    let oauth = match config.public_baseurl() {
        // Its login step is the IAM sign-in, or a password page on a trial server.
        Some(base) if sso.enabled() || config.password_login => {
            Some(Arc::new(crate::identity::oauth::OAuth::new(store.clone(), base)))
        }
        _ => None,
    };
    let media = Arc::new(
        crate::media::Media::new(
            store.clone(),
            rooms.server_name.clone(),
            &config.data_dir,
            config.media.clone(),
            config.antivirus.clone(),
            Some(federation.clone()),
            &config.federation.trusted_ca_files,
        )
        .await
        .context("cannot set up the media repository")?,
    );
    media.spawn_rescans();
    let mailer = crate::push::mail::Mailer::new(
        store.clone(),
        &config.email,
        &config.data_dir,
        config.public_baseurl().map(str::to_owned),
    )
    .context("cannot set up e-mail notifications")?;
    let push = crate::push::Push::new(store.clone(), config.push.clone(), mailer, &config.federation.trusted_ca_files)
        .await
        .context("cannot load the pushers")?;
    rooms.on_push(push.clone());
    let purge = crate::privacy::Purge::new(store.clone(), media.clone(), rooms.clone(), &config.retention);
    purge.spawn();
    crate::identity::lifecycle::spawn_job(lifecycle, store.clone(), accounts.clone(), rooms.clone(), purge.clone());
    Ok(Arc::new(Services {
        sso,
        oauth,
        media,
        push,
        purge,
        accounts,
        sync: Sync::new(store.clone(), rooms.clone(), streams.clone(), typing, presence, e2ee.clone()),
        user_data: UserData::new(store.clone(), streams.clone(), push_rules, rooms.ignored.clone()),
        e2ee,
        backups: Backups::new(store.clone()),
        reports: crate::reports::Reports::new(store.clone(), rooms.clone()),
        limits: RateLimiter::new(config.rate_limits.clone()),
        federation,
        rooms,
        store,
        config,
    }))
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let tls = match (&config.federation_listen, &config.tls_cert, &config.tls_key) {
        (Some(addr), Some(cert), Some(key)) => Some((*addr, crate::tls::server_config(cert, key)?)),
        _ => None,
    };
    let services = build(config).await?;
    // Bound only now: start-up (migrations, keys) is complete. Both listeners are bound
    // before the start-up line, so that the line means the server is reachable on both.
    let tls_listener = match tls {
        Some((addr, config)) => {
            let listener = TlsListener::bind(addr, config).await.with_context(|| format!("cannot listen on {addr}"))?;
            // Only the log says so: stdout carries one line, the plain listener's address,
            // which scripts and tests read (and may stop reading after).
            tracing::info!(address = %addr, "listening (TLS)");
            Some(listener)
        }
        None => None,
    };
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, server_name = %services.config.server_name, "listening");
    println!("missive listening on http://{local}");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let app = api::router(services.clone());
    // Both listeners serve every route: a reverse proxy may terminate TLS instead.
    let plain = axum::serve(listener, app.clone().into_make_service_with_connect_info::<ClientAddr>())
        .with_graceful_shutdown(until_stopped(stopped.clone()));
    match tls_listener {
        Some(tls_listener) => {
            let secure = axum::serve(tls_listener, app.into_make_service_with_connect_info::<ClientAddr>())
                .with_graceful_shutdown(until_stopped(stopped));
            tokio::try_join!(plain.into_future(), secure.into_future())?;
        }
        None => plain.await?,
    }
    services.store.close().await;
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
