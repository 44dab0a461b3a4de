-- Name search ignores case (`person::fold_name`): grams are kept folded to lower case.
INSERT INTO person_grams (gram, person_id)
    SELECT lower(gram), person_id FROM person_grams WHERE gram <> lower(gram)
    ON CONFLICT DO NOTHING;
DELETE FROM person_grams WHERE gram <> lower(gram);
