//! The `tokens` table: tokens sandboxd minted (so that their owner may revoke them) and the
//! revoked ones (the deny-list, kept until they expire).

use rusqlite::{params, OptionalExtension};

use super::{sql, Store, StoreError};

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token's id (`jti`).
    pub jti: String,
    /// Its user (`sub`).
    pub user_id: String,
    /// Its role.
    pub role: String,
    /// Minted at, epoch ms.
    pub created_at: i64,
    /// Expires at, epoch ms.
    pub expires_at: i64,
    /// Revoked at, epoch ms.
    pub revoked_at: Option<i64>,
}

impl Store {
    /// Records a token (minted, or revoked without having been minted here).
    pub async fn put_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let t = t.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO tokens (jti, user_id, role, created_at, expires_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (jti) DO UPDATE SET revoked_at = excluded.revoked_at",
                params![t.jti, t.user_id, t.role, t.created_at, t.expires_at, t.revoked_at],
            )
            .map(drop)
            .map_err(sql("record a token"))
        })
        .await
    }

    /// One token.
    pub async fn token(&self, jti: &str) -> Result<Option<TokenRecord>, StoreError> {
        let jti = jti.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT jti, user_id, role, created_at, expires_at, revoked_at FROM tokens WHERE jti = ?1",
                [&jti],
                |r| {
                    Ok(TokenRecord {
                        jti: r.get(0)?,
                        user_id: r.get(1)?,
                        role: r.get(2)?,
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                        revoked_at: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(sql("read a token"))
        })
        .await
    }

    /// The deny-list: `(jti, expires_at)` of revoked tokens not yet expired at `now`. Expired
    /// entries are dropped on the way.
    pub async fn revoked_tokens(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.call(move |c| {
            c.execute("DELETE FROM tokens WHERE expires_at <= ?1", [now])
                .map_err(sql("drop expired tokens"))?;
            let mut stmt = c
                .prepare("SELECT jti, expires_at FROM tokens WHERE revoked_at IS NOT NULL")
                .map_err(sql("read revoked tokens"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql("read revoked tokens"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(sql("read revoked tokens"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revoked_tokens_survive_a_restart_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let token = |jti: &str, expires_at, revoked_at| TokenRecord {
            jti: jti.into(),
            user_id: "alice".into(),
            role: "user".into(),
            created_at: 1,
            expires_at,
            revoked_at,
        };
        store.put_token(&token("live", 1000, None)).await.unwrap();
        store.put_token(&token("live", 1000, Some(5))).await.unwrap();
        store.put_token(&token("old", 10, Some(5))).await.unwrap();
        store.put_token(&token("kept", 1000, None)).await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.revoked_tokens(100).await.unwrap(),
            [("live".to_owned(), 1000)]
        );
        assert_eq!(
            store.token("old").await.unwrap(),
            None,
            "expired entries are dropped"
        );
        assert_eq!(store.token("kept").await.unwrap().unwrap().revoked_at, None);
    }
}
