//! What the server's benches share: a VEEM in this process, its SQLite store in a temporary
//! directory on disk, `hosts` sim hosts of 128 CPUs and 256 GiB, behind its HTTP router on
//! loopback, with one principal `sm` (token `bench-token`).

/// Starts the VEEM; answers its URL and the directory to keep alive while it runs.
pub async fn start_veem(hosts: usize) -> anyhow::Result<(String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[[principal]]\nname = \"sm\"\ntoken = \"{TOKEN}\"\n",
        dir.path().display()
    );
    for h in 0..hosts {
        config.push_str(&format!(
            "[[host]]\nname = \"h{h:03}\"\ndriver = \"sim\"\ncpus = 128\nmemory_mb = 262144\n"
        ));
    }
    let site = veem_node::SiteConfig::parse(&config).map_err(anyhow::Error::msg)?;
    let started = veem_node::start(&site).await?;
    started.hosts_connected.await?;
    let veem = started.veem;
    let state = veem_server::http::AppState::new(veem, &site.server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, veem_server::http::router(state)).await });
    Ok((url, dir))
}

pub const TOKEN: &str = "bench-token";

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
