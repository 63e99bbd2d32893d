//! The service (`strata serve`): protection policies, the scheduler, jobs,
//! retention, and what an operator sees of them (`status`, `jobs`).

pub mod commands;
pub mod control;
pub mod policy;
pub mod run;
pub mod schedule;
pub mod telemetry;
