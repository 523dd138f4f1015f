export {
  classify,
  type ColumnClass,
  DATA_CLASSIFICATION,
  KEY_STORE_CLASSIFICATION,
  type Sensitivity,
} from './data-classification.ts';
