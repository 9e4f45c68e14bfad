//! Names of the categories a received message can be moved into, and why
//! a message was dead-lettered.

use std::fmt;
use std::str::FromStr;

/// Longest category name, in bytes.
pub const MAX_CATEGORY_LEN: usize = 32;

/// The name of a category an application made for received messages
/// ([`crate::Node::create_category`]), or the dead-letter category
/// [`Category::DEAD`].
///
/// A name is 1 to [`MAX_CATEGORY_LEN`] characters of `a-z`, `0-9`, `-`,
/// `_` and `.`, starting with a letter or digit; `unread` and `archived`
/// are taken by the built-in mailboxes. Kept inline, so that a category is
/// `Copy` like the rest of [`crate::Mailbox`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Category {
    len: u8,
    bytes: [u8; MAX_CATEGORY_LEN],
}

/// Why a name is not a category name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CategoryError {
    /// Empty, or longer than [`MAX_CATEGORY_LEN`].
    #[error("a category name has 1 to {MAX_CATEGORY_LEN} characters")]
    Length,
    /// A character outside the allowed set, or a bad first one.
    #[error(
        "a category name is made of a-z, 0-9, '-', '_' and '.', and starts with a letter or digit"
    )]
    Characters,
    /// `unread` or `archived`.
    #[error("`{0}` is a built-in mailbox, not a category to create")]
    Reserved(String),
}

impl Category {
    /// Where messages go that failed too often or expired.
    pub const DEAD: Category = Category::from_static(b"dead");

    const fn from_static(name: &[u8]) -> Category {
        let mut bytes = [0u8; MAX_CATEGORY_LEN];
        let mut i = 0;
        while i < name.len() {
            bytes[i] = name[i];
            i += 1;
        }
        Category {
            len: name.len() as u8,
            bytes,
        }
    }

    /// The category called `name`.
    ///
    /// # Errors
    ///
    /// When `name` breaks the rules in the type's documentation.
    pub fn new(name: &str) -> Result<Category, CategoryError> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > MAX_CATEGORY_LEN {
            return Err(CategoryError::Length);
        }
        let allowed = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c);
        if !b.iter().all(|&c| allowed(c)) || !b[0].is_ascii_alphanumeric() {
            return Err(CategoryError::Characters);
        }
        if name == "unread" || name == "archived" {
            return Err(CategoryError::Reserved(name.to_string()));
        }
        Ok(Category::from_static(b))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked in `new` and `decode`).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.len);
        out.extend_from_slice(&self.bytes[..self.len as usize]);
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<(Category, &[u8])> {
        let (&len, rest) = bytes.split_first()?;
        let name = rest.get(..len as usize)?;
        let c = Category::new(std::str::from_utf8(name).ok()?).ok()?;
        Some((c, &rest[len as usize..]))
    }
}

impl FromStr for Category {
    type Err = CategoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::new(s)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Category({})", self.as_str())
    }
}

/// Why a message went to the dead-letter category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// It was delivered the maximum number of times of the consumer's
    /// [`crate::RetryPolicy`] and never archived.
    MaxDeliveries,
    /// Its sender's expiry time passed before it was delivered.
    Expired,
    /// Its envelope could not be opened (a field this build does not know,
    /// or a damaged envelope), so it was never delivered.
    Unreadable,
}

impl DeadReason {
    pub(crate) fn code(self) -> u8 {
        match self {
            DeadReason::MaxDeliveries => 1,
            DeadReason::Expired => 2,
            DeadReason::Unreadable => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<DeadReason> {
        match code {
            1 => Some(DeadReason::MaxDeliveries),
            2 => Some(DeadReason::Expired),
            3 => Some(DeadReason::Unreadable),
            _ => None,
        }
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeadReason::MaxDeliveries => "delivered the maximum number of times",
            DeadReason::Expired => "expired",
            DeadReason::Unreadable => "unreadable",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules_and_round_trip() {
        for ok in ["jobs", "retry-later", "a.b_c", "0", &"x".repeat(32)] {
            let c = Category::new(ok).unwrap();
            assert_eq!(c.as_str(), ok);
            let mut out = Vec::new();
            c.encode(&mut out);
            assert_eq!(Category::decode(&out), Some((c, &[][..])));
        }
        assert_eq!(Category::new(""), Err(CategoryError::Length));
        assert_eq!(Category::new(&"x".repeat(33)), Err(CategoryError::Length));
        for bad in ["Jobs", "-x", "a b", "é", "a/b"] {
            assert_eq!(Category::new(bad), Err(CategoryError::Characters), "{bad}");
        }
        assert!(matches!(
            Category::new("archived"),
            Err(CategoryError::Reserved(_))
        ));
        assert_eq!(Category::DEAD, Category::new("dead").unwrap());
    }
}
