//! `strata vault init` and `strata vault info`.

use std::path::PathBuf;

use clap::Subcommand;
use strata_core::crypto::VaultKey;
use strata_core::vault::{Vault, VaultConfig};
use strata_core::{Error, Result};

use crate::context::Context;
use crate::output::print_json;

/// `strata vault ...`
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Create a new vault (refuses to touch an existing one).
    Init {
        /// The vault URL; defaults to --vault or [vault] url.
        url: Option<String>,
        /// Encrypt every backup in this vault. The key is read from --key-file,
        /// or generated into it when the file does not exist yet.
        #[arg(long)]
        encrypt: bool,
    },
    /// Show the vault's metadata.
    Info,
}

/// Runs a vault command.
pub async fn run(command: VaultCommand, ctx: &Context) -> Result<()> {
    match command {
        VaultCommand::Init { url, encrypt } => init(url, encrypt, ctx).await,
        VaultCommand::Info => info(ctx).await,
    }
}

async fn init(url: Option<String>, encrypt: bool, ctx: &Context) -> Result<()> {
    let mut config: VaultConfig = ctx.config.vault.clone();
    if let Some(url) = url {
        config.url = url;
    }
    if config.url.trim().is_empty() {
        return Err(Error::config("no vault URL given").hint(
            "run `strata vault init file:///var/lib/strata/vault` (or s3://, az://, gs://)",
        ));
    }
    let mut generated: Option<PathBuf> = None;
    let key = match (encrypt, &config.key_file) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::config("--encrypt needs a key file").hint(
                "pass --key-file /etc/strata/vault.key (it is created if it does not exist)",
            ));
        }
        (true, Some(path)) if path.exists() => Some(VaultKey::load(path)?),
        (true, Some(path)) => {
            let key = VaultKey::generate();
            key.save_new(path)?;
            generated = Some(path.clone());
            Some(key)
        }
    };
    let vault = match Vault::init(&config, key).await {
        Ok(vault) => vault,
        Err(err) => {
            // A key generated for a vault that was not created is useless: remove it.
            if let Some(path) = &generated {
                let _ = std::fs::remove_file(path);
            }
            return Err(err);
        }
    };
    if ctx.json {
        print_json(&serde_json::json!({ "url": vault.url(), "meta": vault.meta() }))?;
    } else {
        println!(
            "created vault {} (id {})",
            vault.url(),
            vault.meta().vault_id
        );
        if let Some(path) = &config.key_file.filter(|_| encrypt) {
            println!(
                "encrypted with the key in {}: keep a copy of it somewhere safe, without it no backup in this vault can be restored",
                path.display()
            );
        }
    }
    Ok(())
}

async fn info(ctx: &Context) -> Result<()> {
    let vault = ctx.vault().await?;
    let meta = vault.meta();
    if ctx.json {
        return print_json(&serde_json::json!({ "url": vault.url(), "meta": meta }));
    }
    println!("vault      {}", vault.url());
    println!("id         {}", meta.vault_id);
    println!("format     {}", meta.format);
    println!(
        "created    {} by {}",
        meta.created_at.to_rfc3339(),
        meta.created_by
    );
    println!(
        "encryption {}",
        meta.encryption
            .as_ref()
            .map(|e| e.algorithm.as_str())
            .unwrap_or("none")
    );
    Ok(())
}
