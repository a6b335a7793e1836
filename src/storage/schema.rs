//! The diesel schema, written by hand to match both migration folders (a test checks that
//! both backends accept every table and column listed here).

diesel::table! {
    clients (id) {
        id -> Text,
        name -> Text,
        secret_hash -> Nullable<Text>,
        redirect_uris -> Text,
        grant_types -> Text,
        scopes -> Text,
        default_scopes -> Text,
        audience -> Text,
        allowed_origins -> Text,
        skip_consent -> Bool,
        enabled -> Bool,
        updated_at -> BigInt,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        username -> Text,
        password_hash -> Text,
        disabled -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    browser_sessions (id_hash) {
        id_hash -> Text,
        user_id -> Text,
        authenticated_at -> BigInt,
        expires_at -> BigInt,
        last_seen_at -> BigInt,
    }
}

diesel::table! {
    consents (user_id, client_id) {
        user_id -> Text,
        client_id -> Text,
        scope -> Text,
        granted_at -> BigInt,
    }
}

diesel::table! {
    token_families (id) {
        id -> Text,
        client_id -> Text,
        user_id -> Nullable<Text>,
        grant_type -> Text,
        scope -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        refresh_hash -> Nullable<Text>,
        refresh_generation -> BigInt,
        refresh_created_at -> Nullable<BigInt>,
        refresh_idle_expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    authorization_codes (code_hash) {
        code_hash -> Text,
        client_id -> Text,
        user_id -> Text,
        redirect_uri -> Text,
        redirect_uri_sent -> Bool,
        scope -> Text,
        code_challenge -> Nullable<Text>,
        nonce -> Nullable<Text>,
        auth_time -> BigInt,
        created_at -> BigInt,
        expires_at -> BigInt,
        redeemed_at -> Nullable<BigInt>,
        replayed_at -> Nullable<BigInt>,
        family_id -> Nullable<Text>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Text,
        family_id -> Text,
        client_id -> Text,
        scope -> Text,
        created_at -> BigInt,
        idle_expires_at -> BigInt,
        rotated_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    access_tokens (jti) {
        jti -> Text,
        family_id -> Nullable<Text>,
        client_id -> Text,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        algorithm -> Text,
        key_bits -> Integer,
        public_n -> Text,
        public_e -> Text,
        encrypted_private_key -> Binary,
        created_at -> BigInt,
        retired_at -> Nullable<BigInt>,
        publish_until -> Nullable<BigInt>,
    }
}

diesel::table! {
    sealing_keys (purpose) {
        purpose -> Text,
        sealed_key -> Binary,
        created_at -> BigInt,
    }
}

diesel::table! {
    auth_failures (id) {
        id -> Text,
        bucket -> Text,
        occurred_at -> BigInt,
    }
}

diesel::table! {
    audit_events (id) {
        id -> Text,
        occurred_at -> BigInt,
        event -> Text,
        outcome -> Text,
        user_id -> Nullable<Text>,
        client_id -> Nullable<Text>,
        ip -> Nullable<Text>,
        detail -> Nullable<Text>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    clients,
    users,
    browser_sessions,
    consents,
    token_families,
    authorization_codes,
    refresh_tokens,
    access_tokens,
    signing_keys,
    sealing_keys,
    auth_failures,
    audit_events,
);
