//! Secret keys every generation of workers shares (skeleton: the master's ring is to come).
//!
//! [`KeyRing::stable_key`] derives a key for one purpose (QUIC's reset key, its token key, its
//! connection-ID key, ...) from the ring's stable secret, so that every worker given the same
//! ring derives the same key.

use ring::hkdf;

/// The keys this worker shares with its siblings and with the generations before and after it.
#[derive(Clone)]
pub struct KeyRing {
    stable: [u8; 32],
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

/// The key ring named by the environment could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// The system has no randomness to make a key with.
    #[error("cannot make a random key: the system's random source failed")]
    Random,
}

impl KeyRing {
    /// The ring this process was given, or one of its own.
    ///
    /// # Errors
    /// A [`KeyRingError`] naming what is wrong.
    ///
    /// ```
    /// let ring = graceful_listener::keyring::KeyRing::from_env()?;
    /// assert_eq!(ring.stable_key("quic reset"), ring.stable_key("quic reset"));
    /// assert_ne!(ring.stable_key("quic reset"), ring.stable_key("quic token"));
    /// # Ok::<(), graceful_listener::keyring::KeyRingError>(())
    /// ```
    pub fn from_env() -> Result<KeyRing, KeyRingError> {
        let mut stable = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut stable)
            .map_err(|_| KeyRingError::Random)?;
        Ok(KeyRing { stable })
    }

    /// A 32-byte key for `purpose`, derived (HKDF-SHA256) from the ring's stable secret: the
    /// same in every worker that shares the ring, different for every purpose.
    pub fn stable_key(&self, purpose: &str) -> [u8; 32] {
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"graceful-listener key ring").extract(&self.stable);
        let info = [purpose.as_bytes()];
        let mut key = [0u8; 32];
        prk.expand(&info, Len32)
            .and_then(|okm| okm.fill(&mut key))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }
}
