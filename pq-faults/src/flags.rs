//! `--key value` arguments, for the suite and for the processes it starts. Hand-rolled: the
//! binary takes a handful of flags, not worth a parser dependency.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// Flags by name, each with every value given (a flag may repeat).
#[derive(Debug, Default)]
pub struct Flags {
    values: HashMap<String, Vec<String>>,
}

impl Flags {
    /// Parses `--key value` pairs; `switches` name the flags that take no value.
    pub fn parse(args: &[String], switches: &[&str]) -> Result<Flags> {
        let mut flags = Flags::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let Some(key) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?}; flags are written `--name value`");
            };
            let (key, value) = match key.split_once('=') {
                Some((key, value)) => (key, value.to_owned()),
                None if switches.contains(&key) => (key, "true".to_owned()),
                None => {
                    let value = args
                        .next()
                        .with_context(|| format!("--{key} needs a value"))?;
                    (key, value.clone())
                }
            };
            flags.values.entry(key.to_owned()).or_default().push(value);
        }
        Ok(flags)
    }

    /// The last value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key)?.last().map(String::as_str)
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> &[String] {
        self.values.get(key).map_or(&[], Vec::as_slice)
    }

    /// Whether the switch `key` is on.
    pub fn is_set(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v != "false")
    }

    /// The value of `key`, which must be given.
    pub fn required(&self, key: &str) -> Result<&str> {
        self.get(key)
            .with_context(|| format!("--{key} is required"))
    }

    /// The value of `key` parsed, or `default`.
    pub fn parsed<T>(&self, key: &str, default: T) -> Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|e| anyhow::anyhow!("--{key} {value:?}: {e}")),
        }
    }

    /// Refuses flags other than `known`, naming them.
    pub fn only(&self, known: &[&str]) -> Result<()> {
        let mut unknown: Vec<_> = self
            .values
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        if let Some(first) = unknown.first() {
            bail!(
                "unknown flag --{first}; expected one of --{}",
                known.join(", --")
            );
        }
        Ok(())
    }
}
