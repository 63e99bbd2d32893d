//! The engine registry: the one place where the agent knows which engines
//! exist and builds a plugin from its configuration section. Every command
//! that backs up, restores, lists or verifies gets its plugin here and hands
//! it to the library's lifecycle ([`strata_core::lifecycle::Host`]).

use strata_core::plugin::EnginePlugin;
use strata_core::{Error, Result};

use crate::context::Context;

/// The engines this build knows, by the name used in vault keys and on the
/// command line (with accepted aliases).
pub const ENGINES: &[(&str, &[&str])] = &[
    (strata_stream::ENGINE, &[]),
    (strata_postgres::ENGINE, &["pg"]),
    (strata_hana::ENGINE, &[]),
    (strata_sqlserver::ENGINE, &["mssql"]),
];

/// The engine name `text` stands for (`pg` is `postgres`).
pub fn engine_name(text: &str) -> Result<&'static str> {
    ENGINES
        .iter()
        .find(|(name, aliases)| *name == text || aliases.contains(&text))
        .map(|(name, _)| *name)
        .ok_or_else(|| {
            let known: Vec<&str> = ENGINES.iter().map(|(n, _)| *n).collect();
            Error::config(format!("there is no engine `{text}`"))
                .hint(format!("engines: {}", known.join(", ")))
        })
}

/// The plugin of `engine` for `instance`, built from its configuration
/// section when this host has one (a stream needs none: its instance is the
/// stream's name). A plugin without its section still lists, plans and
/// verifies what the vault holds; backups and restores then fail with a
/// configuration error naming the missing section.
pub fn plugin(ctx: &Context, engine: &str, instance: &str) -> Result<Box<dyn EnginePlugin>> {
    match engine_name(engine)? {
        strata_stream::ENGINE => Ok(Box::new(strata_stream::StreamEngine::new(instance)?)),
        strata_postgres::ENGINE => Ok(Box::new(crate::pg::engine(ctx, instance, None)?)),
        strata_hana::ENGINE => Ok(Box::new(strata_hana::HanaEngine::backint(instance))),
        strata_sqlserver::ENGINE => Ok(Box::new(crate::sqlserver::plugin(ctx, instance)?)),
        other => Err(Error::config(format!(
            "engine `{other}` is not built into this agent"
        ))),
    }
}
