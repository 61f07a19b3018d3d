use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use stratify_core::datagen::{Generator, Spec};
use stratify_core::time::format_rfc3339;

#[derive(Args)]
pub struct GenerateArgs {
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    #[arg(long, default_value_t = 10_000)]
    orders: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The instant timestamps count back from (RFC 3339); default: the start
    /// of the current UTC day. Pin it for byte-identical output.
    #[arg(long)]
    now: Option<String>,
    /// Output directory.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let now = match &args.now {
        Some(t) => stratify_core::time::parse_rfc3339(t)
            .map_err(|e| anyhow::anyhow!("--now: {}", e.message))?,
        None => {
            let today = Utc::now()
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .map(|d| d.and_utc());
            today.map_or(0, |d: DateTime<Utc>| d.timestamp_millis())
        }
    };
    let stats = write_dataset(
        &args.out,
        Spec {
            users: args.users,
            events: args.events,
            orders: args.orders,
            seed: args.seed,
            now,
        },
    )?;
    println!(
        "wrote {} users, {} events, {} orders to {}",
        stats.0,
        stats.1,
        stats.2,
        args.out.display()
    );
    Ok(())
}

/// Writes `user_attributes.csv`, `user_events.csv` and `orders.csv` into `dir`.
pub fn write_dataset(dir: &std::path::Path, spec: Spec) -> anyhow::Result<(u64, u64, u64)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut gen = Generator::new(spec);
    let open = |name: &str| -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
        let path = dir.join(name);
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ))
    };
    let mut users = csv::Writer::from_writer(open("user_attributes.csv")?);
    users.write_record([
        "user_id",
        "name",
        "age",
        "gender",
        "location",
        "signup_date",
        "subscription_plan",
        "device_type",
    ])?;
    let mut n_users = 0;
    for u in gen.users() {
        users.write_record([
            u.user_id.to_string().as_str(),
            &u.name,
            &u.age.to_string(),
            u.gender,
            u.location,
            &u.signup_date,
            u.subscription_plan,
            u.device_type,
        ])?;
        n_users += 1;
    }
    users.flush()?;
    let mut events = open("user_events.csv")?;
    writeln!(events, "user_id,event_name,timestamp")?;
    let mut n_events = 0;
    for e in gen.events() {
        writeln!(
            events,
            "{},{},{}",
            e.user_id,
            e.event_name,
            format_rfc3339(e.timestamp)
        )?;
        n_events += 1;
    }
    events.flush()?;
    let mut orders = csv::Writer::from_writer(open("orders.csv")?);
    orders.write_record(["order_id", "user_id", "amount", "city", "timestamp"])?;
    let mut n_orders = 0;
    for o in gen.orders() {
        orders.write_record([
            o.order_id.to_string().as_str(),
            &o.user_id.to_string(),
            &format!("{:.2}", o.amount),
            o.city,
            &format_rfc3339(o.timestamp),
        ])?;
        n_orders += 1;
    }
    orders.flush()?;
    Ok((n_users, n_events, n_orders))
}
