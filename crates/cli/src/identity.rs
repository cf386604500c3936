//! `weft identity status` and `weft identity rotate`: the mesh's CA seen
//! through weft-control's admin port (`/identity`), and a trust-anchor
//! rotation with no downtime, step by step: each step is applied by
//! weft-control, and the next waits until every proxy holds it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Subcommand, Debug)]
pub enum IdentityCommand {
    /// Show the CA: its trust anchors, where a rotation stands, and how
    /// many proxies hold the CA's current generation.
    Status(Target),
    /// Rotate the trust anchor with no downtime: (1) `bundle`: a new root
    /// joins the old in every proxy's trust bundle; (2) `reissue`: the new
    /// root's issuer signs, and every proxy gets a new certificate at once;
    /// (3) `drop`: the old root leaves the bundle. Each step waits until
    /// every proxy has it (progress is printed; the proxies' `/identity`
    /// shows each). A rotation cut short resumes where it stopped.
    Rotate(RotateArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The running mesh's directory (`weft up --dir`): weft-control's admin
    /// address is read from it.
    #[arg(long, default_value = ".weft")]
    pub dir: PathBuf,
    /// weft-control's admin address instead (a mesh not run by `weft up`).
    /// Rotation steps are taken from its host only.
    #[arg(long, value_name = "ADDR")]
    pub control_admin: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
pub struct RotateArgs {
    #[command(flatten)]
    pub target: Target,
    /// How long each step may wait for every proxy to hold it.
    #[arg(long, default_value = "120s", value_parser = parse_secs)]
    pub step_timeout: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix('s').unwrap_or(s);
    n.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{s}` is not a number of seconds (e.g. 120s)"))
}

pub async fn run(cmd: IdentityCommand) -> anyhow::Result<()> {
    match cmd {
        IdentityCommand::Status(t) => {
            let admin = admin(&t)?;
            let s = get_status(admin).await?;
            print!("{}", describe(&s));
            Ok(())
        }
        IdentityCommand::Rotate(args) => rotate(&args).await,
    }
}

/// weft-control's admin address: given, or from `weft up`'s state.
fn admin(t: &Target) -> anyhow::Result<SocketAddr> {
    if let Some(a) = t.control_admin {
        return Ok(a);
    }
    let state = super::up::RunDir::new(&t.dir).state();
    let text = std::fs::read_to_string(&state).with_context(|| {
        format!(
            "no mesh is running from {} (cannot read {}): start one with `weft up mesh.yaml`, or give --control-admin",
            t.dir.display(),
            state.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}", state.display()))?;
    v["control"]["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{}: no control-plane admin address", state.display()))
}

/// One HTTP/1.1 request to the admin port: (status, body).
async fn request(admin: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(admin).await?;
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    // A step makes a key pair and writes a few files: well under this.
    let text = tokio::time::timeout(Duration::from_secs(30), ask)
        .await
        .with_context(|| format!("weft-control's admin at {admin} did not answer within 30 s"))?
        .with_context(|| format!("weft-control's admin at {admin}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("weft-control's admin at {admin} answered no HTTP"))?;
    Ok((status, body.to_string()))
}

async fn get_status(admin: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let (status, body) = request(admin, "GET", "/identity").await?;
    if status != 200 {
        bail!("weft-control at {admin}: {}", body.trim());
    }
    serde_json::from_str(&body).context("weft-control's /identity is not JSON")
}

fn describe(s: &serde_json::Value) -> String {
    let mut out = format!(
        "trust domain: {}\nrotation: {} (next step: {})\ngeneration: {}\nanchors:\n",
        s["trust_domain"].as_str().unwrap_or("?"),
        s["rotation"].as_str().unwrap_or("?"),
        s["next_step"].as_str().unwrap_or("?"),
        s["generation"].as_str().unwrap_or("?"),
    );
    for a in s["anchors"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  - {} sha256:{}\n",
            a["subject"].as_str().unwrap_or("?"),
            a["sha256"].as_str().unwrap_or("?")
        ));
    }
    out.push_str(&format!(
        "proxies holding this generation: {} of {}\n",
        s["proxies_current"], s["proxies"]
    ));
    out
}

async fn rotate(args: &RotateArgs) -> anyhow::Result<()> {
    let admin = admin(&args.target)?;
    let first = get_status(admin).await?;
    let mut at = first["rotation"].as_str().unwrap_or("idle").to_string();
    if at != "idle" {
        println!("a rotation stopped at `{at}`: resuming");
    }
    let mut steps = 0;
    loop {
        let step = match (at.as_str(), steps) {
            ("idle", 0) => "bundle",
            ("idle", _) => break,
            ("bundled", _) => "reissue",
            ("reissued", _) => "drop",
            (other, _) => bail!("weft-control reports rotation `{other}`"),
        };
        let what = match step {
            "bundle" => "a new trust anchor joins the old one in every proxy's bundle",
            "reissue" => "the new anchor's issuer signs; every proxy gets a new certificate",
            _ => "the old trust anchor leaves every proxy's bundle",
        };
        println!("step {step}: {what}");
        let (status, body) = request(admin, "POST", &format!("/identity/rotate?step={step}")).await?;
        if status != 200 {
            bail!("weft-control refused the `{step}` step: {}", body.trim());
        }
        let s: serde_json::Value = serde_json::from_str(&body).context("weft-control's answer is not JSON")?;
        wait_for_proxies(admin, &s, args.step_timeout).await?;
        at = s["rotation"].as_str().unwrap_or("idle").to_string();
        steps += 1;
    }
    let s = get_status(admin).await?;
    print!("rotation done\n{}", describe(&s));
    Ok(())
}

/// Waits until every proxy holds the generation in `s`, printing progress.
async fn wait_for_proxies(admin: SocketAddr, s: &serde_json::Value, timeout: Duration) -> anyhow::Result<()> {
    let generation = s["generation"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let now = get_status(admin).await?;
        if now["generation"].as_str() != Some(generation.as_str()) {
            bail!("the CA changed under this rotation (another `weft identity rotate`?)");
        }
        let (current, all) = (now["proxies_current"].as_u64(), now["proxies"].as_u64());
        if last != Some((current, all)) {
            println!("  proxies holding it: {} of {}", current.unwrap_or(0), all.unwrap_or(0));
            last = Some((current, all));
        }
        if current.is_some() && current == all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not every proxy took this step within {timeout:?}; behind: {}. Run `weft identity rotate` again to resume",
                now["behind"]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
