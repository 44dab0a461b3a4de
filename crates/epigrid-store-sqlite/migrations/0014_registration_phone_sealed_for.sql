-- A registration's phone ciphertext is bound to the person it came in as; this names them
-- when that is not `person_id` (they had been merged into another). NULL: `person_id`.
ALTER TABLE registrations ADD COLUMN phone_sealed_for TEXT;
