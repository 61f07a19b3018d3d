//! The seeded synthetic data set behind `stratify generate` (the DuckMart
//! shape: users with attributes, behavioral events, food-delivery orders).
//!
//! Output is a pure function of (seed, counts, `now`): the same seed gives the
//! same users, events and orders, and only the absolute timestamps move with
//! `now` (every instant is drawn as an offset back from it). Uses ChaCha8,
//! whose stream is specified, so output does not drift across platforms.

use crate::time::Millis;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DAY_MS: i64 = 86_400_000;

/// Event names of the DuckMart data set, with their share of all events.
pub const EVENT_MIX: [(&str, f64); 7] = [
    ("PAGE_VIEW", 0.34),
    ("LOGIN", 0.20),
    ("SEARCH", 0.15),
    ("ADDED_TO_CART", 0.11),
    ("LOGOUT", 0.10),
    ("PURCHASE_MADE", 0.06),
    ("REMOVED_FROM_CART", 0.04),
];

/// US states with roughly population-proportional weights; California is the
/// most common, as in the DuckMart data.
const STATES: [(&str, f64); 20] = [
    ("California", 12.0),
    ("Texas", 9.0),
    ("Florida", 6.7),
    ("New York", 6.0),
    ("Pennsylvania", 3.9),
    ("Illinois", 3.8),
    ("Ohio", 3.5),
    ("Georgia", 3.3),
    ("North Carolina", 3.2),
    ("Michigan", 3.0),
    ("New Jersey", 2.8),
    ("Virginia", 2.6),
    ("Washington", 2.3),
    ("Arizona", 2.2),
    ("Massachusetts", 2.1),
    ("Tennessee", 2.1),
    ("Indiana", 2.0),
    ("Colorado", 1.8),
    ("Oregon", 1.3),
    ("Nevada", 1.0),
];

const CITIES: [(&str, f64); 8] = [
    ("Bengaluru", 24.0),
    ("Mumbai", 18.0),
    ("Delhi", 16.0),
    ("Hyderabad", 12.0),
    ("Pune", 10.0),
    ("Chennai", 9.0),
    ("Kolkata", 7.0),
    ("HSR Layout", 4.0),
];

const FIRST: [&str; 24] = [
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Elijah", "Sophia", "James", "Isabella", "Lucas",
    "Mia", "Mason", "Amelia", "Ethan", "Harper", "Aarav", "Priya", "Diego", "Sofia", "Wei",
    "Fatima", "Kenji", "Zara", "Omar",
];
const LAST: [&str; 20] = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Patel",
    "Nguyen",
    "Kim",
    "Chen",
    "Singh",
];

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub user_id: u64,
    pub name: String,
    pub age: u32,
    pub gender: &'static str,
    pub location: &'static str,
    /// `YYYY-MM-DD`.
    pub signup_date: String,
    pub subscription_plan: &'static str,
    pub device_type: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub user_id: u64,
    pub event_name: &'static str,
    pub timestamp: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub order_id: u64,
    pub user_id: u64,
    /// Rupees with two decimals.
    pub amount: f64,
    pub city: &'static str,
    pub timestamp: Millis,
}

/// The generator's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub users: u64,
    pub events: u64,
    pub orders: u64,
    pub seed: u64,
    pub now: Millis,
}

/// A generated data set, streamed: users first, then events, then orders.
pub struct Generator {
    spec: Spec,
    rng: ChaCha8Rng,
    /// Cumulative activity weights: heavy users send many more events.
    activity: Vec<f64>,
    signup: Vec<Millis>,
}

impl Generator {
    pub fn new(spec: Spec) -> Self {
        Self {
            spec,
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            activity: Vec::new(),
            signup: Vec::new(),
        }
    }

    /// All users, ids `1..=users`. Must be drained before events or orders.
    pub fn users(&mut self) -> impl Iterator<Item = UserRow> + '_ {
        self.activity = Vec::with_capacity(self.spec.users as usize);
        self.signup = Vec::with_capacity(self.spec.users as usize);
        let mut total = 0.0;
        (1..=self.spec.users).map(move |user_id| {
            let rng = &mut self.rng;
            let age = (36.0 + 12.0 * normal(rng)).round().clamp(18.0, 70.0) as u32;
            let gender = match rng.random::<f64>() {
                x if x < 0.48 => "male",
                x if x < 0.96 => "female",
                _ => "non-binary",
            };
            let location = pick(rng, &STATES);
            let signup_days_ago = rng.random_range(0..730i64);
            let signup_ms = self.spec.now - signup_days_ago * DAY_MS - rng.random_range(0..DAY_MS);
            let plan = match rng.random::<f64>() {
                x if x < 0.60 => "free",
                x if x < 0.85 => "basic",
                _ => "premium",
            };
            let device = match rng.random::<f64>() {
                x if x < 0.60 => "mobile",
                x if x < 0.90 => "desktop",
                _ => "tablet",
            };
            let name = format!(
                "{} {}",
                FIRST[rng.random_range(0..FIRST.len())],
                LAST[rng.random_range(0..LAST.len())]
            );
            // Log-normal activity: most users are light, a few are heavy.
            total += (1.1 * normal(rng)).exp();
            self.activity.push(total);
            self.signup.push(signup_ms);
            UserRow {
                user_id,
                name,
                age,
                gender,
                location,
                signup_date: crate::time::format_rfc3339(signup_ms)[..10].to_owned(),
                subscription_plan: plan,
                device_type: device,
            }
        })
    }

    /// Behavioral events over the last 180 days (never before the user signed up).
    pub fn events(&mut self) -> impl Iterator<Item = EventRow> + '_ {
        (0..self.spec.events).filter_map(move |_| {
            let user = self.pick_user()?;
            let event_name = pick(&mut self.rng, &EVENT_MIX);
            let timestamp = self.instant_after_signup(user, 180);
            Some(EventRow {
                user_id: user as u64 + 1,
                event_name,
                timestamp,
            })
        })
    }

    /// Food-delivery orders over the last 180 days, ids `1..=orders`.
    pub fn orders(&mut self) -> impl Iterator<Item = OrderRow> + '_ {
        (1..=self.spec.orders).filter_map(move |order_id| {
            let user = self.pick_user()?;
            let city = pick(&mut self.rng, &CITIES);
            let amount = ((5.9 + 0.6 * normal(&mut self.rng))
                .exp()
                .clamp(49.0, 9_999.0)
                * 100.0)
                .round()
                / 100.0;
            let timestamp = self.instant_after_signup(user, 180);
            Some(OrderRow {
                order_id,
                user_id: user as u64 + 1,
                amount,
                city,
                timestamp,
            })
        })
    }

    fn pick_user(&mut self) -> Option<usize> {
        let total = *self.activity.last()?;
        let x = self.rng.random::<f64>() * total;
        Some(
            self.activity
                .partition_point(|&c| c <= x)
                .min(self.activity.len() - 1),
        )
    }

    /// Whole seconds, like the files SQL engines load.
    fn instant_after_signup(&mut self, user: usize, days: i64) -> Millis {
        let earliest = (self.spec.now - days * DAY_MS).max(self.signup[user]);
        let span = (self.spec.now - earliest).max(1000);
        let t = self.spec.now - self.rng.random_range(0..span);
        t - t.rem_euclid(1000)
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, table: &[(T, f64)]) -> T {
    let total: f64 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.random::<f64>() * total;
    for (item, w) in table {
        if x < *w {
            return *item;
        }
        x -= w;
    }
    table[table.len() - 1].0
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> Spec {
        Spec {
            users: 2_000,
            events: 10_000,
            orders: 1_000,
            seed,
            now: 1_780_000_000_000,
        }
    }

    fn all(spec: Spec) -> (Vec<UserRow>, Vec<EventRow>, Vec<OrderRow>) {
        let mut g = Generator::new(spec);
        let u = g.users().collect();
        let e = g.events().collect();
        let o = g.orders().collect();
        (u, e, o)
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        assert_eq!(all(spec(42)), all(spec(42)));
        assert_ne!(all(spec(42)).0, all(spec(43)).0);
    }

    #[test]
    fn data_is_plausible() {
        let (users, events, orders) = all(spec(7));
        assert_eq!(
            (users.len(), events.len(), orders.len()),
            (2_000, 10_000, 1_000)
        );
        assert!(users.iter().all(|u| (18..=70).contains(&u.age)));
        let ca = users.iter().filter(|u| u.location == "California").count();
        let tx = users.iter().filter(|u| u.location == "Texas").count();
        assert!(
            ca > tx,
            "California should be the most common state ({ca} vs {tx})"
        );
        let young = users.iter().filter(|u| (25..=34).contains(&u.age)).count();
        assert!(
            (300..700).contains(&young),
            "{young} users aged 25-34 of 2000"
        );
        let now = spec(7).now;
        assert!(events
            .iter()
            .all(|e| e.timestamp <= now && e.timestamp > now - 180 * DAY_MS - 1000));
        assert!(events.iter().all(|e| (1..=2000).contains(&e.user_id)));
        assert!(orders
            .iter()
            .all(|o| o.amount >= 49.0 && o.amount <= 9_999.0));
        let logins = events.iter().filter(|e| e.event_name == "LOGIN").count();
        assert!(
            (1_600..2_400).contains(&logins),
            "{logins} logins of 10000 events"
        );
    }
}
