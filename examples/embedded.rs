//! zkmirror embedded in a tokio application: run the mirror as a task, watch its status, stop
//! it on Ctrl-C.
//!
//! ```sh
//! cargo run --example embedded -- 127.0.0.1:2181 redis://127.0.0.1:6379/ /app
//! ```

use std::time::Duration;

use zkmirror::{Mirror, MirrorConfig, Phase};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(zk), Some(redis), Some(root)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: embedded ZK_SERVERS REDIS_URL ROOT");
        std::process::exit(2);
    };
    tracing_subscriber::fmt().with_env_filter("zkmirror=info").init();

    let mut config = MirrorConfig::new(zk, redis, root);
    config.prefix = "zk".into();
    let mirror = Mirror::new(config)?; // validates; nothing connects until run()
    let handle = mirror.handle();
    let task = tokio::spawn(mirror.run());

    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {
                let status = handle.status();
                println!("{:>11} zxid {:#x}  written {}  unchanged {}  deleted {}",
                    status.phase, status.applied_zxid, status.written, status.unchanged, status.deleted);
                if status.phase == Phase::Live && status.synced {
                    // An application could now start serving: its config is in Redis.
                }
            }
        }
    }
    handle.stop();
    task.await??;
    Ok(())
}
