//! The scenarios, one function each, each returning its rows of the table; and [`Ctx`], what
//! they share: the options, the services, the 1,000-city data set and the default handler
//! settings.

pub mod ceiling;
pub mod change_feed;
pub mod hits;
pub mod misses;
pub mod near_cache;
mod near_sweep;
pub mod profile;
pub mod rss;
pub mod scale;
pub mod single_flight;
pub mod sizes;
pub mod startup;
mod sweep;
pub mod write_mix;

use test_support::stack::{CityRow, cities_csv};

use crate::services::{CONTAINER, DB, HandlerCfg, Services};
use crate::{Opts, Res, data};

/// The query whose page the hit rows serve (the 1,000-city set's largest state page).
pub const HIT_QUERY: &str = "state=Texas";
/// A one-document page: per-request cost without the bytes.
pub const SMALL_QUERY: &str = "city=Austin&state=Texas";

/// What every scenario needs.
pub struct Ctx {
    pub opts: Opts,
    pub svc: Services,
    /// The default handler: database `bench`, this run's Redis, no extra setting.
    pub cfg: HandlerCfg,
    pub http: reqwest::Client,
    /// The 1,000-city CSV, seeded into `bench`/`us_cities`.
    pub cities: Vec<CityRow>,
    /// Seconds `handler seed --csv` took for it.
    pub seed_1k_secs: f64,
    /// Seconds per `wrk` run.
    pub secs: u32,
}

impl Ctx {
    /// Starts the services and seeds the 1,000-city CSV with `handler seed`.
    pub fn start(opts: Opts) -> Res<Self> {
        let cities = data::cities();
        println!("== services");
        let svc = Services::start()?;
        println!(
            "  redis 127.0.0.1:{}  cosmos {}",
            svc.redis.port, svc.cosmos.endpoint
        );
        let csv = cities_csv();
        let seed_1k_secs = svc.seed_cli(DB, &["--csv", &csv.to_string_lossy()])?;
        println!("  seeded {} cities in {seed_1k_secs:.1}s", cities.len());
        Ok(Self {
            opts,
            cfg: svc.handler_cfg(DB, CONTAINER),
            http: svc.http.clone(),
            cities,
            seed_1k_secs,
            secs: opts.wrk_secs(),
            svc,
        })
    }
}
