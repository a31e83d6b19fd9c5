//! `strftime_now(format)`: templates such as Llama 3.2's put today's date in the system
//! prompt. The clock is read in UTC: prompts then do not depend on the host's time zone.

use minijinja::{Error, ErrorKind};
use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A UTC calendar date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DateTime {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    /// 1..=366
    day_of_year: u32,
    /// 0 = Monday, as Python's `weekday()`.
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl DateTime {
    /// The date and time `secs` seconds after 1970-01-01T00:00:00Z.
    pub(super) fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let time = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let days_before_month = (1..month).map(|m| days_in_month(year, m)).sum::<u32>();
        Self {
            year,
            month,
            day,
            day_of_year: days_before_month + day,
            // 1970-01-01 was a Thursday.
            weekday: (days + 3).rem_euclid(7) as u32,
            hour: time / 3600,
            minute: time / 60 % 60,
            second: time % 60,
        }
    }

    /// C's `strftime` for the directives Python documents as portable, plus `%e %F %T`.
    pub(super) fn format(&self, format: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let directive = chars
                .next()
                .ok_or_else(|| format!("strftime format '{format}' ends with a lone '%'"))?;
            out.push_str(&self.directive(directive).ok_or_else(|| {
                format!("strftime format '{format}': unsupported directive '%{directive}'")
            })?);
        }
        Ok(out)
    }

    fn directive(&self, directive: char) -> Option<String> {
        let month_name = MONTHS[self.month as usize - 1];
        let weekday_name = WEEKDAYS[self.weekday as usize];
        let hour12 = (self.hour + 11) % 12 + 1;
        Some(match directive {
            'a' => weekday_name[..3].to_string(),
            'A' => weekday_name.to_string(),
            'b' | 'h' => month_name[..3].to_string(),
            'B' => month_name.to_string(),
            'd' => format!("{:02}", self.day),
            'e' => format!("{:2}", self.day),
            'F' => format!("{:04}-{:02}-{:02}", self.year, self.month, self.day),
            'H' => format!("{:02}", self.hour),
            'I' => format!("{hour12:02}"),
            'j' => format!("{:03}", self.day_of_year),
            'm' => format!("{:02}", self.month),
            'M' => format!("{:02}", self.minute),
            'p' => if self.hour < 12 { "AM" } else { "PM" }.to_string(),
            'S' => format!("{:02}", self.second),
            'T' => format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second),
            'u' => (self.weekday + 1).to_string(),
            'w' => ((self.weekday + 1) % 7).to_string(),
            'y' => format!("{:02}", self.year.rem_euclid(100)),
            'Y' => self.year.to_string(),
            '%' => "%".to_string(),
            _ => return None,
        })
    }
}

/// The template function `strftime_now(format)`.
pub(super) fn strftime_now(format: &str) -> Result<String, Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    DateTime::from_unix(secs)
        .format(format)
        .map_err(|msg| Error::new(ErrorKind::InvalidOperation, msg))
}

/// (year, month, day) of a count of days since 1970-01-01 in the proleptic Gregorian
/// calendar, counted in 400-year eras that start on March 1st so leap days fall last.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_a_thursday_in_january_1970() {
        let t = DateTime::from_unix(0);
        assert_eq!(
            t.format("%A %a %d %B %b %Y %y %j %H:%M:%S %p").unwrap(),
            "Thursday Thu 01 January Jan 1970 70 001 00:00:00 AM"
        );
    }

    #[test]
    fn known_dates_format_like_python() {
        // 2024-07-26T14:05:09Z, the date Llama 3.1's template hard-codes.
        let t = DateTime::from_unix(1_722_002_709);
        assert_eq!(t.format("%d %b %Y").unwrap(), "26 Jul 2024");
        assert_eq!(t.format("%B %d, %Y").unwrap(), "July 26, 2024");
        assert_eq!(t.format("%Y-%m-%d").unwrap(), "2024-07-26");
        assert_eq!(
            t.format("%I:%M %p, %A, day %j").unwrap(),
            "02:05 PM, Friday, day 208"
        );
        assert_eq!(t.format("%F %T %e%%").unwrap(), "2024-07-26 14:05:09 26%");
        // 2000-02-29 (a leap day in a century leap year) and the day after.
        assert_eq!(
            DateTime::from_unix(951_782_400).format("%F %j").unwrap(),
            "2000-02-29 060"
        );
        assert_eq!(
            DateTime::from_unix(951_868_800).format("%F %a").unwrap(),
            "2000-03-01 Wed"
        );
        // Before the epoch: 1969-12-31T23:59:59Z.
        assert_eq!(
            DateTime::from_unix(-1).format("%F %T %a").unwrap(),
            "1969-12-31 23:59:59 Wed"
        );
    }

    #[test]
    fn bad_formats_are_errors_naming_the_directive() {
        let t = DateTime::from_unix(0);
        assert!(t.format("%Q").unwrap_err().contains("'%Q'"));
        assert!(t.format("100%").unwrap_err().contains("lone '%'"));
    }
}
