-- Blocking (`blockUser`): who blocks whom, for the live path (a blocked sender's messages
-- are not pushed to the blocker) and for `blockedUsers`. Part of the users projection.
CREATE TABLE user_blocks
(
    blocker  uuid   NOT NULL,
    blocked  uuid   NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (blocker, blocked)
);
