-- Name search ignores case (`person::fold_name`): grams are kept folded to lower case, in any
-- alphabet (epigrid_fold is registered on every connection epigrid opens).
INSERT OR IGNORE INTO person_grams (gram, person_id)
    SELECT epigrid_fold(gram), person_id FROM person_grams WHERE gram <> epigrid_fold(gram);
DELETE FROM person_grams WHERE gram <> epigrid_fold(gram);
