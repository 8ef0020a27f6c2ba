//! Response wrappers (seed 003: `{"data": …}`) and cursor pagination of lists.
//!
//! A list answers at most `limit` items (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) and
//! `next_cursor`, the id of its last item when more follow. Passing it back as `cursor` lists
//! the items after that one, in the same order; a cursor naming no item is a 400.

use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// One resource.
#[derive(Debug, Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

impl<T> Data<T> {
    pub fn new(data: T) -> Data<T> {
        Data { data }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// What a delete answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// The id (or name) of what was deleted.
    pub id: String,
    pub deleted: bool,
}

impl Deleted {
    pub fn new(id: impl ToString) -> Data<Deleted> {
        Data::new(Deleted {
            id: id.to_string(),
            deleted: true,
        })
    }
}

/// The page limit: `None` is the default; outside 1..=[`MAX_LIMIT`] is a 400.
pub fn limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} is not between 1 and {MAX_LIMIT}"
        ))),
    }
}

/// The page of `items` (in their listing order) after the one whose id is `cursor`.
pub fn paginate<T, U>(
    items: Vec<T>,
    requested_limit: Option<u32>,
    cursor: Option<&str>,
    id: impl Fn(&T) -> String,
    wire: impl Fn(T) -> U,
) -> Result<Page<U>, ApiError> {
    let limit = limit(requested_limit)? as usize;
    let start = match cursor.filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => {
            items
                .iter()
                .position(|item| id(item) == c)
                .ok_or_else(|| ApiError::bad_request(format!("unknown cursor {c:?}")))?
                + 1
        }
    };
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(start).take(limit).collect();
    let next_cursor = match page.last() {
        Some(last) if start + page.len() < total => Some(id(last)),
        _ => None,
    };
    Ok(Page {
        data: page.into_iter().map(wire).collect(),
        next_cursor,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn page(n: u32, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<u32>, ApiError> {
        paginate((1..=n).collect(), limit, cursor, u32::to_string, |x| x)
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let first = page(5, Some(2), None).unwrap();
        assert_eq!(first.data, [1, 2]);
        assert_eq!(first.next_cursor.as_deref(), Some("2"));
        let second = page(5, Some(2), Some("2")).unwrap();
        assert_eq!(second.data, [3, 4]);
        let last = page(5, Some(2), Some("4")).unwrap();
        assert_eq!((last.data, last.next_cursor), (vec![5], None));
        let exact = page(4, Some(2), Some("2")).unwrap();
        assert_eq!(exact.next_cursor, None, "nothing after the last item");
        assert_eq!(page(3, None, Some("")).unwrap().data.len(), 3);
        assert_eq!(page(0, None, None).unwrap().data, Vec::<u32>::new());
    }

    #[test]
    fn bad_limits_and_cursors_are_400() {
        for bad in [page(3, Some(0), None), page(3, Some(1001), None)] {
            assert_eq!(bad.unwrap_err().status().as_u16(), 400);
        }
        assert_eq!(page(3, None, Some("9")).unwrap_err().status().as_u16(), 400);
    }
}
